"""Log-probs in `danlu serve`, shaped as OpenAI shapes them.

Which distribution: every log-prob the server reports is the model's own, log_softmax(logits) of the raw
next-token logits, before the request's penalties, logit_bias, grammar, temperature and top-k/top-p/min-p
(what OpenAI's API and vLLM's default `raw_logprobs` report). So a prompt token's log-prob (`echo`) and a
generated token's are the same quantity, the one lm-evaluation-harness sums, whatever the sampling settings.
The engine keeps them only for rows that ask (GenerationOptions.top_logprobs), see generate/rows.py.

    chat         logprobs: true, top_logprobs: 0..20
                 -> choices[i].logprobs = {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}
    completions  logprobs: 0..5 (and echo: true for the prompt's tokens, max_tokens: 0 to only score it)
                 -> choices[i].logprobs = {"tokens", "token_logprobs", "top_logprobs", "text_offset"}

A completions `top_logprobs` entry is a dict of the `logprobs` most likely tokens plus the chosen one (so up to
logprobs + 1 entries, as OpenAI documents); the first prompt token has no log-prob (null). A token that is not
whole UTF-8 (a byte-level piece of a character) is written "bytes:\\xe4\\xb8" as OpenAI does; `bytes` is exact.
Prompt tokens are scored by the model's forward over the (right-padded) prompts, next to the batcher.

Notation: B prompts, T positions, V vocabulary.
"""

from __future__ import annotations

import codecs
import math
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from danlu.errors import DanluError
from danlu.generate.options import GenerationOptions
from danlu.generate.rows import Completion, ScoredToken
from danlu.generate.search import raw_top_logprobs
from danlu.generate.steps import forward_tokens, model_device, new_state
from danlu.serve.schemas import APIError

MAX_CHAT_TOP_LOGPROBS = 20  # OpenAI's limits
MAX_COMPLETION_LOGPROBS = 5
SCORE_TOKENS_PER_FORWARD = 1024  # rows x positions per scoring forward: bounds its (B, T, V) logits
FLOOR = -9999.0  # OpenAI's stand-in for a log-prob of -inf (JSON has no infinities)
_SCORING = threading.Lock()


# ---- requests ---------------------------------------------------------------------------------------------
def chat_top_logprobs(req: Any) -> int | None:
    """The engine's top_logprobs for a chat request (None: no log-probs asked), or a 400 naming the field."""
    k = req.top_logprobs
    if k is not None and not req.logprobs:
        raise APIError(
            400,
            f"top_logprobs={k} needs logprobs: true; set it or leave top_logprobs out",
            param="top_logprobs",
        )
    if k is not None and k > MAX_CHAT_TOP_LOGPROBS:
        raise APIError(
            400, f"top_logprobs={k} is too large; use 0..{MAX_CHAT_TOP_LOGPROBS}", param="top_logprobs"
        )
    return (k or 0) if req.logprobs else None


def completion_logprobs(req: Any) -> int | None:
    """The engine's top_logprobs for a completions request (None: none asked), or a 400 naming the field:
    logprobs beyond 5, echo with n > 1 and max_tokens 0 without echo are refused."""
    k = req.logprobs
    if k is not None and k > MAX_COMPLETION_LOGPROBS:
        raise APIError(400, f"logprobs={k} is too large; use 0..{MAX_COMPLETION_LOGPROBS}", param="logprobs")
    if req.echo and req.n > 1:
        raise APIError(
            400, f"echo with n={req.n} is not supported; echo the prompt once with n=1", param="echo"
        )
    if req.max_tokens == 0 and not req.echo:
        raise APIError(
            400, "max_tokens=0 generates nothing: it only goes with echo: true (to score the prompt)",
            param="max_tokens",
        )  # fmt: skip
    return k


def with_top_logprobs(opts: GenerationOptions, k: int | None) -> GenerationOptions:
    """opts asking the engine to keep k top log-probs per token; a 400 where decoding cannot (beam search)."""
    if k is None:
        return opts
    try:
        return replace(opts, top_logprobs=k)
    except DanluError as e:
        raise APIError(400, str(e), param="logprobs") from e


# ---- prompt scoring -----------------------------------------------------------------------------------------
@torch.inference_mode()
def score_prompts(model: Any, prompts: Sequence[Sequence[int]], k: int) -> list[list[ScoredToken | None]]:
    """Each prompt token's raw log-prob given the tokens before it, with the k most likely tokens there; the
    first token has none (None). Prompts are right-padded into batches (causal attention never looks at the
    padding after a position) and fed through the model's forward with a KV cache, at most
    SCORE_TOKENS_PER_FORWARD positions x rows at a time, so the (B, T, V) logits of a long prompt never exist
    at once; one scoring runs at a time (a lock), so concurrent echo requests cannot multiply that memory."""
    with _SCORING:
        out: list[list[ScoredToken | None]] = []
        start = 0
        while start < len(prompts):
            end, T = start + 1, len(prompts[start])
            while (
                end < len(prompts)
                and max(T, len(prompts[end])) * (end + 1 - start) <= SCORE_TOKENS_PER_FORWARD
            ):
                T, end = max(T, len(prompts[end])), end + 1
            out += _score_batch(model, prompts[start:end], T, k)
            start = end
        return out


def _score_batch(
    model: Any, batch: Sequence[Sequence[int]], T: int, k: int
) -> list[list[ScoredToken | None]]:
    device = model_device(model)
    input_ids = torch.zeros(len(batch), T, dtype=torch.long, device=device)  # (B, T), right-padded
    for b, ids in enumerate(batch):
        input_ids[b, : len(ids)] = torch.tensor(list(ids), device=device)
    state = new_state(model, len(batch), T)
    step = max(1, SCORE_TOKENS_PER_FORWARD // len(batch))
    chosen: list[list[float]] = [[] for _ in batch]
    top_ids: list[list[Any]] = [[] for _ in batch]
    top_lps: list[list[Any]] = [[] for _ in batch]
    for at in range(0, T - 1, step):
        logits = forward_tokens(model, state, input_ids[:, at : at + step])  # (B, c, V): predicts at + 1 ...
        c = min(logits.shape[1], T - 1 - at)  # the last position predicts nothing
        logits = logits[:, :c]
        lp, ids, lps = _scored(logits, input_ids[:, at + 1 : at + 1 + c], k)
        for b in range(len(batch)):
            chosen[b] += lp[b]
            top_ids[b] += ids[b]
            top_lps[b] += lps[b]
    out: list[list[ScoredToken | None]] = []
    for b, ids in enumerate(batch):
        n = len(ids) - 1
        pairs = [tuple(zip(i, v)) for i, v in zip(top_ids[b][:n], top_lps[b][:n])]
        out.append([None, *((int(t), lp, p) for t, lp, p in zip(ids[1:], chosen[b][:n], pairs))])
    return out


def _scored(logits: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[list, list, list]:
    """The engine's raw_top_logprobs at every position of logits (B, T, V) against labels (B, T): each label's
    log-prob (B, T), the k most likely ids and their log-probs (B, T, k), most likely first, as lists. Rows go
    1024 at a time, so one (chunk, V) fp32 buffer exists at once."""
    B, T, V = logits.shape
    rows, toks = logits.reshape(B * T, V).split(1024), labels.reshape(B * T).split(1024)  # (B·T, V), (B·T,)
    chosen, ids, lps = zip(*(raw_top_logprobs(r, t, k) for r, t in zip(rows, toks)))
    return (torch.cat(chosen).view(B, T).tolist(), torch.cat(ids).view(B, T, k).tolist(),
            torch.cat(lps).view(B, T, k).tolist())  # fmt: skip


# ---- shaping ---------------------------------------------------------------------------------------------
def completion_scored(c: Completion) -> list[ScoredToken]:
    """A finished row's generated tokens with their raw log-probs and top pairs (the engine kept them)."""
    return list(zip(c.token_ids, c.raw_logprobs, c.top_logprobs))


def _finite(lp: float) -> float:
    return lp if math.isfinite(lp) else FLOOR


def token_text(tokenizer: Any, token_id: int) -> tuple[str, list[int]]:
    """(the token as text, its UTF-8 bytes); a token that is not whole UTF-8 is written "bytes:\\xNN..."."""
    raw_bytes = getattr(tokenizer, "token_bytes", None)
    data = raw_bytes(token_id) if raw_bytes is not None else tokenizer.decode([token_id]).encode("utf-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = "bytes:" + "".join(f"\\x{b:02x}" for b in data)
    return text, list(data)


def chat_content(tokenizer: Any, scored: Sequence[ScoredToken]) -> list[dict[str, Any]]:
    """OpenAI chat `logprobs.content`: one entry per token, its top_logprobs sorted most likely first."""
    content = []
    for tok, lp, top in scored:
        text, data = token_text(tokenizer, tok)
        alternatives = []
        for t, v in top:
            t_text, t_data = token_text(tokenizer, t)
            v = lp if t == tok else v  # the chosen token's one value, however its top-k copy was rounded
            alternatives.append({"token": t_text, "logprob": _finite(v), "bytes": t_data})
        content.append({"token": text, "logprob": _finite(lp), "bytes": data, "top_logprobs": alternatives})
    return content


def legacy_logprobs(
    tokenizer: Any, scored: Sequence[ScoredToken | None], ids: Sequence[int] = (), text_start: int = 0
) -> dict[str, Any]:
    """The completions shape {"tokens", "token_logprobs", "top_logprobs", "text_offset"}. `scored[i]` None is
    a token without a log-prob (the prompt's first, whose id is ids[i]); text_offset is each token's first
    character in the choice's text, counted from text_start."""
    tokens, token_lps, tops, offsets = [], [], [], []
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    at = text_start
    for i, entry in enumerate(scored):
        tok = ids[i] if entry is None else entry[0]
        text, data = token_text(tokenizer, tok)
        tokens.append(text)
        offsets.append(at)
        at += len(decoder.decode(bytes(data)))
        if entry is None:
            token_lps.append(None)
            tops.append(None)
            continue
        _, lp, top = entry
        token_lps.append(_finite(lp))
        alternatives = {token_text(tokenizer, t)[0]: _finite(v) for t, v in top}
        alternatives[text] = _finite(lp)  # always listed (OpenAI), with the value token_logprobs holds
        tops.append(alternatives)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}
