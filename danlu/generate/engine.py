"""Text in, text out: prompts are tokenised and left-padded into one batch, decoded by a strategy of `search.py`,
and turned back into text, holding back what is not yet safe to show (a split UTF-8 character, the start of a
stop string).

Notation: B prompts, T prompt length after left padding.

`danlu.generate(model, tokenizer, prompt | prompts, **options)` and `danlu.stream(model, tokenizer, prompt,
**options)` are the public entry points; the options are `GenerationOptions` fields. Extra models switch the
strategy: `draft_model=` speculative decoding, `amateur_model=` contrastive decoding; `num_beams > 1` beam search.
`json_schema=` (a dict or its JSON text) constrains the output to that schema (grammar.py).
`compile=True` compiles the decode step with `torch.compile` (a CUDA graph on CUDA, fused C++ on CPU); the
first call pays the compilation (SmolLM2 on 2 CPU cores: about 55 s, then ~5 s while inductor's on-disk cache
holds it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from danlu.errors import DanluError
from danlu.generate.options import GenerationOptions
from danlu.generate.search import beam_search, decode_n, speculative_decode
from danlu.generate.steps import model_device

__all__ = ["GenerationOptions", "generate", "stream", "generate_ids", "encode_prompts", "stop_token_ids"]


def encode_prompts(
    model: nn.Module, tokenizer: Any, prompts: list[str], opts: GenerationOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the prompts, left-padded: input_ids and attention_mask (B, T) on the model's device."""
    ids = [tokenizer.encode(p) for p in prompts]
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
    pad = tokenizer.pad_id
    input_ids = torch.full((len(ids), longest), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, longest - len(x) :] = torch.tensor(x)
        attention_mask[i, longest - len(x) :] = 1
    device = model_device(model)
    return input_ids.to(device), attention_mask.to(device)


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
    for m in (model, draft_model, amateur_model):
        if m is not None:
            m.eval()


@torch.inference_mode()
def generate_ids(
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
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), whatever the strategy (beam search and speculative decoding
    yield their finished output token by token). A finished row keeps receiving its stop id. With
    opts.json_schema, grammar is its `grammar.json_constraint(tokenizer, opts, V, stop_ids)`.

    Token by token, the caller stops decoding by closing the generator; beam search yields nothing until it
    ends, so it calls `should_stop()` before each of its steps instead and ends early once that is True."""
    if opts.json_schema is not None and grammar is None:
        raise DanluError("json_schema is set but no grammar was given; pass grammar=json_constraint(...)")
    if opts.num_beams > 1 or draft_model is not None:
        if opts.num_beams > 1:
            rows = beam_search(model, input_ids, attention_mask, opts, stop_ids, should_stop)
        else:
            rows = [speculative_decode(model, draft_model, input_ids, opts, stop_ids)[0]]
        filler = stop_ids[0] if stop_ids else 0
        for step in range(max((len(r) for r in rows), default=0)):
            yield torch.tensor([r[step] if step < len(r) else filler for r in rows])
        return
    yield from decode_n(
        model, input_ids, attention_mask, opts, stop_ids, amateur_model, compile=compile, grammar=grammar
    )


class TextTracker:
    """Turns a growing list of token ids into safe-to-show text.

    Decoding is incremental (each token costs O(1) decodes, not a re-decode of everything): the text of
    ids[prefix:] minus that of ids[prefix:read] is the new text, where the few tokens before `read` give the
    tokenizer its context (SentencePiece spaces, byte merges). New text ending in U+FFFD is an incomplete UTF-8
    character split across tokens: it waits for the rest. A tail that could still grow into a stop string is
    held back; once a stop string appears, the text is cut before it and nothing more is shown.
    """

    def __init__(self, tokenizer: Any, stop: list[str]) -> None:
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.prefix = self.read = 0  # ids[prefix:read] is decoded context, ids[read:] not yet turned to text
        self.text = ""  # all text decoded so far
        self.emitted = 0  # characters of `text` already shown
        self.finished = False  # a stop string was seen: nothing more is shown

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, tok: int) -> str:
        """Add one token; return the text that became safe to show (often "")."""
        self.ids.append(tok)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
        return self._release(len(self.text), hold=True)

    def _release(self, safe: int, hold: bool) -> str:
        if self.finished:
            return ""
        for s in self.stop:
            cut = self.text.find(s, self.emitted)
            if cut != -1:
                self.finished = True
                piece = self.text[self.emitted : cut]
                self.emitted = cut
                return piece
        if hold:
            for s in self.stop:  # hold back a tail that could still grow into a stop string
                for n in range(min(len(s) - 1, safe - self.emitted), 0, -1):
                    if self.text[:safe].endswith(s[:n]):
                        safe -= n
                        break
        piece = self.text[self.emitted : max(safe, self.emitted)]
        self.emitted = max(safe, self.emitted)
        return piece

    def flush(self) -> str:
        """The rest of the text at the end of generation (an undecodable tail included)."""
        if self.finished:
            return ""
        self.text += self._decode(self.ids[self.prefix :])[
            len(self._decode(self.ids[self.prefix : self.read])) :
        ]
        self.prefix = self.read = len(self.ids)
        return self._release(len(self.text), hold=False)


def _start(model: nn.Module, tokenizer, prompts: list[str], options: dict[str, Any]):
    draft_model = options.pop("draft_model", None)
    amateur_model = options.pop("amateur_model", None)
    compile = bool(options.pop("compile", False))
    opts = GenerationOptions.from_kwargs(**options)
    _check_models(model, draft_model, amateur_model, opts)
    input_ids, attention_mask = encode_prompts(model, tokenizer, prompts, opts)
    stop_ids = stop_token_ids(tokenizer, opts)
    grammar = None
    if opts.json_schema is not None:
        from danlu.generate.grammar import json_constraint

        grammar = json_constraint(tokenizer, opts, model.config.vocab_size, stop_ids)
    tokens = generate_ids(
        model, input_ids, attention_mask, opts, stop_ids, draft_model, amateur_model, compile, grammar
    )
    return opts, stop_ids, tokens


def generate(model: nn.Module, tokenizer: Any, prompt: str | list[str], **options: Any) -> str | list[str]:
    """The continuation of each prompt (without the prompt). A string in, a string out; a list in, a list out.

    Options: the `GenerationOptions` fields (max_new_tokens, temperature, top_k, top_p, min_p,
    repetition_penalty, presence_penalty, frequency_penalty, no_repeat_ngram_size, num_beams, length_penalty,
    stop, seed, json_schema, ...), plus draft_model=, amateur_model= and compile= (see the module docstring).
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise DanluError("no prompts given")
    if options.get("draft_model") is not None and len(prompts) > 1:
        return [generate(model, tokenizer, p, **options) for p in prompts]
    opts, stop_ids, tokens = _start(model, tokenizer, prompts, dict(options))
    trackers = [TextTracker(tokenizer, opts.stop) for _ in prompts]
    ended = [False] * len(prompts)  # a stop id or a stop string reached
    texts = ["" for _ in prompts]
    for tok in tokens:
        for i, t in enumerate(tok.tolist()):
            if ended[i]:
                continue
            if t in stop_ids:
                ended[i] = True
                continue
            texts[i] += trackers[i].push(t)
            ended[i] = trackers[i].finished
        if all(ended):
            break
    for i, tr in enumerate(trackers):
        texts[i] += tr.flush()
    return texts[0] if isinstance(prompt, str) else texts


def stream(model: nn.Module, tokenizer: Any, prompt: str, **options: Any) -> Iterator[str]:
    """Yield the continuation of one prompt piece by piece, as soon as each piece is printable.

    Takes the same options as `generate`. Pieces never split a UTF-8 character or show part of a stop string.
    """
    if not isinstance(prompt, str):
        raise DanluError(
            f"stream takes one prompt string, got {type(prompt).__name__}; use generate for lists"
        )
    opts, stop_ids, tokens = _start(model, tokenizer, [prompt], dict(options))
    tracker = TextTracker(tokenizer, opts.stop)
    for tok in tokens:
        t = int(tok[0])
        if t in stop_ids:
            break
        piece = tracker.push(t)
        if piece:
            yield piece
        if tracker.finished:
            return
    rest = tracker.flush()
    if rest:
        yield rest
