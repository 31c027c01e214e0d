"""Batched decoding with a KV cache: prefill the prompts once, then decode one token at a time.

Notation: B prompts, T prompt length (after left padding), V vocab.

Prompts of different lengths are left-padded so every row's next token sits in the last column; the attention
mask hides the padding and position ids count only real tokens, so a padded row computes exactly what it would
alone. Each row stops on its own (EOS, a stop string, or max_new_tokens).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from danlu.errors import DanluError
from danlu.generate.processors import next_token, validate_options


@dataclass
class GenerationOptions:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy; the CLIs default to sampling at 0.8
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    stop: list[str] = field(default_factory=list)  # stop strings: output is cut before the first one
    seed: int | None = None
    add_eos_stop: bool = True  # stop at the tokenizer's end-of-text id
    stop_token_ids: list[int] = field(default_factory=list)  # more ids that end a row (chat: <|im_end|>)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        validate_options(self.temperature, self.top_k, self.top_p, self.max_new_tokens)


def _prepare(model, tokenizer, prompts: list[str], opts: GenerationOptions):
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
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(ids), longest), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, longest - len(x) :] = torch.tensor(x)
        attention_mask[i, longest - len(x) :] = 1
    return input_ids.to(device), attention_mask.to(device)


@torch.no_grad()
def generate_ids(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, opts: GenerationOptions,
                 stop_ids: list[int]) -> Iterator[torch.Tensor]:  # fmt: skip
    """Yield the next token of every row, (B,), until every row produced a stop id or max_new_tokens.

    A finished row keeps receiving its stop id (ignored by the callers); decoding is KV-cached."""
    B, T = input_ids.shape
    device = input_ids.device
    generator = None
    if opts.temperature > 0 and opts.seed is not None:
        generator = torch.Generator(device=device).manual_seed(opts.seed)
    cache = model.new_kv_cache(B, max_len=T + opts.max_new_tokens)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): padding does not count
    next_pos = position_ids[:, -1:] + 1  # (B, 1)
    mask = attention_mask
    logits = model(input_ids, attention_mask=mask, kv_cache=cache, position_ids=position_ids).logits[:, -1]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    stop_tensor = torch.tensor(stop_ids, device=device)
    for _ in range(opts.max_new_tokens):
        tok = next_token(logits, opts.temperature, opts.top_k, opts.top_p, generator)  # (B,)
        if stop_ids:
            tok = tok.masked_fill(done, stop_ids[0])
            done |= torch.isin(tok, stop_tensor)
        yield tok
        if bool(done.all()):
            return
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=device)], dim=1)  # (B, S)
        logits = model(tok[:, None], attention_mask=mask, kv_cache=cache, position_ids=next_pos).logits[:, -1]
        next_pos = next_pos + 1


def _stop_ids(tokenizer, opts: GenerationOptions) -> list[int]:
    ids = list(opts.stop_token_ids)
    if opts.add_eos_stop and tokenizer.eos_token_id is not None:
        ids.insert(0, tokenizer.eos_token_id)
    return ids


class _TextTracker:
    """Turns a growing list of token ids into safe-to-show text: holds back an incomplete UTF-8 character
    (decoded as U+FFFD) and any tail that could be the start of a stop string."""

    def __init__(self, tokenizer, stop: list[str]) -> None:
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.emitted = 0  # characters already shown
        self.finished = False  # a stop string was seen: nothing more is shown

    def push(self, tok: int) -> str:
        self.ids.append(tok)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for s in self.stop:
            cut = text.find(s)
            if cut != -1:
                self.finished = True
                piece = text[self.emitted : cut]
                self.emitted = cut
                return piece
        safe = len(text)
        if text.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for the rest
            safe -= 1
        for s in self.stop:  # hold back a tail that could still grow into a stop string
            for n in range(min(len(s) - 1, safe), 0, -1):
                if text[:safe].endswith(s[:n]):
                    safe -= n
                    break
        piece = text[self.emitted : max(safe, self.emitted)]
        self.emitted = max(safe, self.emitted)
        return piece

    def flush(self) -> str:
        if self.finished:
            return ""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        piece = text[self.emitted :]
        self.emitted = len(text)
        return piece


def generate(model, tokenizer, prompt: str | list[str], **options) -> str | list[str]:
    """The continuation of each prompt (without the prompt). A string in, a string out; a list in, a list out.

    Options: max_new_tokens, temperature (0 = greedy), top_k, top_p, stop, seed.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise DanluError("no prompts given")
    opts = GenerationOptions(**options)
    model.eval()
    input_ids, attention_mask = _prepare(model, tokenizer, prompts, opts)
    trackers = [_TextTracker(tokenizer, opts.stop) for _ in prompts]
    ended = [False] * len(prompts)  # a stop id or a stop string reached
    texts = ["" for _ in prompts]
    stop_ids = _stop_ids(tokenizer, opts)
    for tok in generate_ids(model, input_ids, attention_mask, opts, stop_ids):
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


def stream(model, tokenizer, prompt: str, **options) -> Iterator[str]:
    """Yield the continuation of one prompt piece by piece, as soon as each piece is printable."""
    opts = GenerationOptions(**options)
    model.eval()
    input_ids, attention_mask = _prepare(model, tokenizer, [prompt], opts)
    tracker = _TextTracker(tokenizer, opts.stop)
    stop_ids = _stop_ids(tokenizer, opts)
    for tok in generate_ids(model, input_ids, attention_mask, opts, stop_ids):
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
