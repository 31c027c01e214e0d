"""The one decoding engine: prompts are tokenised and left-padded into one batch, decoded by a strategy of
`search.py`, and each row's tokens turned into a `Completion` (token ids, their log-probs, finish reason,
token counts and text), text pieces released as soon as they are safe to show (never a split UTF-8 character
or the start of a stop string).

`run(model, tokenizer, prompts, opts)` returns one Completion per row; `decode_rows` is the same loop as a
stream of `RowUpdate`s for callers that forward pieces as they come (the server's batcher, `stream`). The
per-row bookkeeping lives in `RowDecoder`, independent of the batch, so a continuous batcher can add and
remove rows between steps. Identical prompts in a batch are prefilled once and their cache shared
(`num_samples=G` asks for G samples of each prompt: GRPO's groups, the server's n choices).

Notation: B prompts, T prompt length after left padding.

`danlu.generate(model, tokenizer, prompt | prompts, **options)` and `danlu.stream(model, tokenizer, prompt,
**options)` are the public entry points; the options are `GenerationOptions` fields. Extra models switch the
strategy: `draft_model=` speculative decoding, `amateur_model=` contrastive decoding; `num_beams > 1` beam search;
`draft="ngram"` speculative decoding by prompt lookup, no second model (speculative.py, batched like the rest).
`json_schema=` (a dict or its JSON text) constrains the output to that schema (grammar.py).
`compile=True` compiles the decode step with `torch.compile` (a CUDA graph on CUDA, fused C++ on CPU); the
first call pays the compilation (SmolLM2 on 2 CPU cores: about 55 s, then ~5 s while inductor's on-disk cache
holds it). Here compile= defaults to False; the public `danlu.generate` / `danlu.stream` (danlu/__init__.py)
first pick the fastest measured path for the model when compile= / quantize= are not given
(`fast_path.library_decoding`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from danlu.errors import DanluError
from danlu.generate.options import GenerationOptions
from danlu.generate.rows import FINISH_REASONS, Completion, RowDecoder, RowUpdate, TextTracker  # noqa: F401
from danlu.generate.search import CausalStepper, beam_hypotheses, decode_steps, raw_top_logprobs
from danlu.generate.speculative import check_speculative, speculative_rows
from danlu.generate.steps import model_device
from danlu.tokenizers.base import pad_id_of

__all__ = [
    "GenerationOptions", "Completion", "RowDecoder", "RowUpdate", "run", "decode_rows", "generate", "stream", "stream_completion",
    "decode_prompts", "generate_ids", "encode_prompts", "pad_prompts", "stop_token_ids",
]  # fmt: skip


def check_prompt_ids(model: nn.Module, ids: list[list[int]], opts: GenerationOptions) -> None:
    """Every prompt has a token and, with max_new_tokens after it, fits the model's context."""
    if any(len(x) == 0 for x in ids):
        raise DanluError("a prompt is empty; give at least one character of prompt")
    block = model.config.block_size
    longest = max(len(x) for x in ids)
    if longest >= block:
        raise DanluError(
            f"the prompt is {longest} tokens but the model's context is {block}; shorten the prompt"
        )
    if longest + opts.max_new_tokens > block:
        raise DanluError(
            f"max_new_tokens={opts.max_new_tokens} plus the {longest}-token prompt exceeds the model's context "
            f"of {block} tokens; use max_new_tokens <= {block - longest}"
        )


def pad_prompts(
    model: nn.Module, tokenizer: Any, ids: list[list[int]], opts: GenerationOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt token ids, checked and left-padded: input_ids and attention_mask (B, T) on the model's device."""
    check_prompt_ids(model, ids, opts)
    longest = max(len(x) for x in ids)
    pad = pad_id_of(tokenizer)  # any tokenizer object, not only danlu's
    input_ids = torch.full((len(ids), longest), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, longest - len(x) :] = torch.tensor(x)
        attention_mask[i, longest - len(x) :] = 1
    device = model_device(model)
    return input_ids.to(device), attention_mask.to(device)


def encode_prompts(
    model: nn.Module, tokenizer: Any, prompts: list[str], opts: GenerationOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the prompts, left-padded: input_ids and attention_mask (B, T) on the model's device."""
    return pad_prompts(model, tokenizer, [tokenizer.encode(p) for p in prompts], opts)


def stop_token_ids(tokenizer: Any, opts: GenerationOptions) -> list[int]:
    """The ids that end a row: the tokenizer's end-of-text (unless add_eos_stop=False) and stop_token_ids."""
    ids = list(opts.stop_token_ids)
    if opts.add_eos_stop and tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.insert(0, tokenizer.eos_token_id)
    return ids


def _check_models(model: nn.Module, draft_model, amateur_model, opts: GenerationOptions) -> None:
    if draft_model is not None and amateur_model is not None:
        raise DanluError("give either draft_model (speculative) or amateur_model (contrastive), not both")
    if opts.num_beams > 1 and (draft_model is not None or amateur_model is not None):
        raise DanluError(f"num_beams={opts.num_beams} cannot be combined with a draft or amateur model")
    if opts.json_schema is not None and draft_model is not None:
        raise DanluError("json_schema does not work with speculative decoding; drop draft_model")
    if draft_model is not None or opts.draft != "none":
        check_speculative(model, draft_model, opts, amateur_model)
    for m in (model, draft_model, amateur_model):
        if m is not None:
            m.eval()


@torch.inference_mode()
def scored_steps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    opts: GenerationOptions,
    stop_ids: list[int],
    draft_model: nn.Module | None = None,
    amateur_model: nn.Module | None = None,
    compile: bool = False,
    grammar: Any = None,
    should_stop: Callable[[], bool] | None = None,
    expand_rows: torch.Tensor | None = None,
    row_seeds: list[int] | None = None,
    observe: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (the next token of every row (R,), its log-prob (R,)), whatever the strategy (beam search and
    speculative decoding yield their finished output token by token). A finished row keeps receiving its stop
    id. With opts.json_schema, grammar is its `grammar.json_constraint(tokenizer, opts, V, stop_ids)`.
    expand_rows (R,): row r continues prompt row expand_rows[r] (prefilled once); row_seeds: one sampling
    seed per row. Neither goes with beam search or speculative decoding, nor does observe (decode_steps').

    Token by token, the caller stops decoding by closing the generator; beam search yields nothing until it
    ends, so it calls `should_stop()` before each of its steps instead and ends early once that is True."""
    if opts.json_schema is not None and grammar is None:
        raise DanluError("json_schema is set but no grammar was given; pass grammar=json_constraint(...)")
    if opts.num_beams > 1 or draft_model is not None or opts.draft != "none":
        if expand_rows is not None or row_seeds is not None or observe is not None:
            raise DanluError(
                "shared prompts, per-row seeds and top_logprobs go with greedy or sampled decoding only"
            )
        if opts.num_beams > 1:
            stepper = CausalStepper(model, opts.max_new_tokens)
            hyps = beam_hypotheses(stepper, (input_ids, attention_mask), opts, stop_ids, should_stop)
            rows = [(h.token_ids, h.logprobs) for h in hyps]
        else:
            outs = speculative_rows(model, draft_model, input_ids, attention_mask, opts, stop_ids)[0]
            rows = [(ids, [float("nan")] * len(ids)) for ids in outs]
        filler = stop_ids[0] if stop_ids else 0
        for step in range(max((len(r) for r, _ in rows), default=0)):
            yield (
                torch.tensor([r[step] if step < len(r) else filler for r, _ in rows]),
                torch.tensor([lp[step] if step < len(lp) else 0.0 for _, lp in rows]),
            )
        return
    yield from decode_steps(
        model, input_ids, attention_mask, opts, stop_ids, amateur_model, compile=compile, grammar=grammar,
        expand_rows=expand_rows, row_seeds=row_seeds, observe=observe,
    )  # fmt: skip


@torch.inference_mode()
def generate_ids(*args: Any, **kwargs: Any) -> Iterator[torch.Tensor]:
    """`scored_steps` (the same arguments) yielding only the next token of every row, (B,)."""
    steps = scored_steps(*args, **kwargs)
    try:
        for tok, _ in steps:
            yield tok
    finally:
        steps.close()


def decode_rows(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    opts: GenerationOptions,
    rows: list[RowDecoder],
    stop_ids: list[int],
    *,
    draft_model: nn.Module | None = None,
    amateur_model: nn.Module | None = None,
    compile: bool = False,
    grammar: Any = None,
    expand_rows: torch.Tensor | None = None,
    row_seeds: list[int] | None = None,
    is_cancelled: Callable[[int], bool] | None = None,
    on_step: Callable[[], None] | None = None,
) -> Iterator[RowUpdate]:
    """Decode the batch, feeding row r's tokens to rows[r]; yield a RowUpdate whenever a row releases text or
    finishes (its Completion in `done`, exactly once per row). A row for which is_cancelled(r) turns True
    finishes "cancelled" at the next step; once every row is finished, decoding stops. on_step() is called
    once per engine step (a beam-search step counts once). With opts.top_logprobs = k, every row also keeps
    its tokens' raw log-probs and k most likely tokens (`_capture`), reported in each update's `scored`."""
    cancelled = is_cancelled or (lambda r: False)
    observe, captured = _capture(opts.top_logprobs)

    def all_cancelled() -> bool:  # beam search asks before each of its steps
        if on_step is not None:
            on_step()
        return all(cancelled(r) for r in range(len(rows)))

    steps = scored_steps(
        model, input_ids, attention_mask, opts, stop_ids, draft_model, amateur_model, compile, grammar,
        all_cancelled, expand_rows, row_seeds, observe,
    )  # fmt: skip
    beams = opts.num_beams > 1
    try:
        for tok, logprob in steps:
            if on_step is not None and not beams:
                on_step()
            tops = captured()
            for r, (t, lp) in enumerate(zip(tok.tolist(), logprob.tolist())):
                row = rows[r]
                if row.finished:
                    continue
                if cancelled(r):
                    row.cancel()
                    yield RowUpdate(r, "", row.result())
                    continue
                piece = row.push(t, lp, None if tops is None else tops[r])
                if piece or row.finished:
                    yield RowUpdate(r, piece, row.result() if row.finished else None, row.take_scored())
            if all(row.finished for row in rows):
                break  # closing the generator stops decoding
    finally:
        steps.close()
    for r, row in enumerate(rows):
        if not row.finished:
            if cancelled(r):
                row.cancel()
                yield RowUpdate(r, "", row.result())
            else:
                piece = row.close()
                yield RowUpdate(r, piece, row.result(), row.take_scored())


def _capture(k: int | None) -> tuple[Callable[[torch.Tensor, torch.Tensor], None] | None, Callable[[], Any]]:
    """(observe for decode_steps, a function giving the last step's per-row (raw log-prob, top pairs)), or
    (None, a function giving None) when k is None: the default path computes nothing extra."""
    last: list[Any] = [None]
    if k is None:
        return None, lambda: None

    def observe(logits: torch.Tensor, tok: torch.Tensor) -> None:
        chosen, ids, lps = raw_top_logprobs(logits, tok, k)
        last[0] = [(c, tuple(zip(i, v))) for c, i, v in zip(chosen.tolist(), ids.tolist(), lps.tolist())]

    return observe, lambda: last[0]


def _shared_prompts(ids: list[list[int]]) -> tuple[list[list[int]], list[int] | None]:
    """The distinct prompts (first appearance order) and, when some repeat, each row's index among them."""
    first: dict[tuple[int, ...], int] = {}
    index = [first.setdefault(tuple(x), len(first)) for x in ids]
    if len(first) == len(ids):
        return ids, None
    return [list(k) for k in first], index


def run(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    opts: GenerationOptions | None = None,
    *,
    num_samples: int = 1,
    row_seeds: list[int] | None = None,
    draft_model: nn.Module | None = None,
    amateur_model: nn.Module | None = None,
    compile: bool = False,
    share_prefill: bool = True,
    **options: Any,
) -> list[Completion]:
    """One Completion per row: prompts are strings or token-id lists; with num_samples=G each prompt gives G
    consecutive rows. Identical prompts are prefilled once and share their KV cache (greedy or sampled
    decoding). opts, or the GenerationOptions fields as keywords. row_seeds: one sampling seed per row
    (the G samples of a prompt need different ones; opts.seed gives every row the same stream).
    share_prefill=False prefills every row (the baseline of benchmarks/rollout_speed.py)."""
    started = _start_rows(model, tokenizer, prompts, opts, num_samples, row_seeds, draft_model, amateur_model,
                          compile, options, share_prefill)  # fmt: skip
    return list(_completions(started))


def _start_rows(model, tokenizer, prompts, opts, num_samples, row_seeds, draft_model, amateur_model, compile,
                options, share_prefill=True) -> tuple[Iterator[RowUpdate], list[RowDecoder]]:  # fmt: skip
    prompts = list(prompts)
    if not prompts:
        raise DanluError("no prompts given")
    if num_samples < 1:
        raise DanluError(f"num_samples must be >= 1, got {num_samples}")
    if opts is None:
        opts = GenerationOptions.from_kwargs(**options)
    elif options:
        raise DanluError(f"give opts or option keywords, not both (got {sorted(options)})")
    ids = [tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
    ids = [x for x in ids for _ in range(num_samples)]
    stop_ids = stop_token_ids(tokenizer, opts)
    rows = [RowDecoder(tokenizer, stop_ids, opts.stop, opts.max_new_tokens, len(x)) for x in ids]
    updates = decode_prompts(model, tokenizer, ids, opts, rows, draft_model=draft_model, amateur_model=amateur_model,
                             compile=compile, row_seeds=row_seeds, share_prefill=share_prefill)  # fmt: skip
    return updates, rows


def decode_prompts(
    model: nn.Module,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    opts: GenerationOptions,
    rows: list[RowDecoder],
    share_prefill: bool = True,
    **kwargs: Any,
) -> Iterator[RowUpdate]:
    """`decode_rows` from each row's prompt token ids (checked against the context and left-padded): a prompt
    that several rows share is prefilled once (greedy or sampled decoding; unless share_prefill=False).
    kwargs: decode_rows' keywords."""
    _check_models(model, kwargs.get("draft_model"), kwargs.get("amateur_model"), opts)
    stop_ids = stop_token_ids(tokenizer, opts)
    ids, expand_rows = prompt_ids, None
    if share_prefill and opts.num_beams == 1 and kwargs.get("draft_model") is None and opts.draft == "none":
        ids, index = _shared_prompts(prompt_ids)
        if index is not None:
            expand_rows = torch.tensor(index, device=model_device(model))
    input_ids, attention_mask = pad_prompts(model, tokenizer, ids, opts)
    grammar = _grammar(model, tokenizer, opts, stop_ids)
    return decode_rows(model, input_ids, attention_mask, opts, rows, stop_ids, grammar=grammar,
                       expand_rows=expand_rows, **kwargs)  # fmt: skip


def _completions(started: tuple[Iterator[RowUpdate], list[RowDecoder]]) -> Iterator[Completion]:
    updates, rows = started
    for _ in updates:
        pass
    return (row.result() for row in rows)


def _grammar(model: nn.Module, tokenizer: Any, opts: GenerationOptions, stop_ids: list[int]) -> Any:
    if opts.json_schema is None:
        return None
    from danlu.generate.grammar import json_constraint

    return json_constraint(tokenizer, opts, model.config.vocab_size, stop_ids)


def _start(model: nn.Module, tokenizer, prompts: list[str], options: dict[str, Any]):
    """(opts, stop_ids, token generator) of `generate_ids` for prompts and option keywords (danlu chat)."""
    draft_model = options.pop("draft_model", None)
    amateur_model = options.pop("amateur_model", None)
    compile = bool(options.pop("compile", False))
    opts = GenerationOptions.from_kwargs(**options)
    _check_models(model, draft_model, amateur_model, opts)
    input_ids, attention_mask = encode_prompts(model, tokenizer, prompts, opts)
    stop_ids = stop_token_ids(tokenizer, opts)
    grammar = _grammar(model, tokenizer, opts, stop_ids)
    tokens = generate_ids(
        model, input_ids, attention_mask, opts, stop_ids, draft_model, amateur_model, compile, grammar
    )
    return opts, stop_ids, tokens


def _rows(model: nn.Module, tokenizer: Any, prompts: list[str], options: dict[str, Any]):
    draft_model = options.pop("draft_model", None)
    amateur_model = options.pop("amateur_model", None)
    compile = bool(options.pop("compile", False))
    return _start_rows(model, tokenizer, prompts, None, 1, None, draft_model, amateur_model, compile, options)


def generate(model: nn.Module, tokenizer: Any, prompt: str | list[str], **options: Any) -> str | list[str]:
    """The continuation of each prompt (without the prompt). A string in, a string out; a list in, a list out.

    Options: the `GenerationOptions` fields (max_new_tokens, temperature, top_k, top_p, min_p,
    repetition_penalty, presence_penalty, frequency_penalty, no_repeat_ngram_size, num_beams, length_penalty,
    stop, seed, json_schema, ...), plus draft_model=, amateur_model= and compile= (see the module docstring).
    `run` gives the token ids, log-probs and finish reasons too.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise DanluError("no prompts given")
    texts = [c.text for c in _completions(_rows(model, tokenizer, prompts, dict(options)))]
    return texts[0] if isinstance(prompt, str) else texts


def stream(model: nn.Module, tokenizer: Any, prompt: str, **options: Any) -> Iterator[str]:
    """Yield the continuation of one prompt piece by piece, as soon as each piece is printable.

    Takes the same options as `generate`. Pieces never split a UTF-8 character or show part of a stop string.
    """
    if not isinstance(prompt, str):
        raise DanluError(
            f"stream takes one prompt string, got {type(prompt).__name__}; use generate for lists"
        )
    for item in stream_completion(model, tokenizer, prompt, **options):
        if isinstance(item, str):
            yield item


def stream_completion(
    model: nn.Module, tokenizer: Any, prompt: str, **options: Any
) -> Iterator[str | Completion]:
    """`stream`'s pieces, then the row's Completion (ids, log-probs, finish reason, counts) last."""
    if not isinstance(prompt, str):
        raise DanluError(
            f"stream takes one prompt string, got {type(prompt).__name__}; use generate for lists"
        )
    updates, rows = _rows(model, tokenizer, [prompt], dict(options))
    for update in updates:
        if update.piece:
            yield update.piece
    yield rows[0].result()
