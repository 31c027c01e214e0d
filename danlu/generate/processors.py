"""Logits processors: pure functions (B, V) -> (B, V) that reshape the next-token distribution.

Notation: B rows, V vocab. Removed tokens get −inf, so softmax gives them probability 0.

Notes 002 §decoding strategies:
- temperature τ: softmax(logits / τ); τ < 1 sharpens, τ > 1 flattens, τ → 0 is greedy.
- top-k: keep the k most likely tokens (Fan et al. 2018).
- top-p / nucleus (Holtzman et al. 2020): keep the smallest set of most likely tokens whose probability reaches p.
- min-p (Nguyen et al. 2024): keep tokens with p(x) >= min_p · max p, a cut that follows the model's confidence.
- repetition penalty (CTRL, Keskar et al. 2019): a token already in the text has its logit divided by θ (or
  multiplied, when negative, so it always drops).
- presence / frequency penalties (OpenAI): logit − α_presence·[count > 0] − α_frequency·count, counting the
  tokens generated so far.
- no-repeat-n-gram (Paulus et al. 2017): forbid any token that would complete an n-gram already in the text.
- min new tokens: forbid the end-of-text ids until enough tokens exist; logit bias: add a constant per token.
- grammar (json_schema): forbid every token that cannot continue a document the schema accepts (grammar.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from danlu.generate.options import GenerationOptions

NEG_INF = float("-inf")


# Below this τ, logits / τ can overflow float32 (a logit of 10 at τ = 1e-38 is inf; inf − inf is NaN in softmax).
_TINY_TEMPERATURE = 1e-4


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / τ (τ > 0). For a tiny τ the row's largest logit is subtracted first (softmax does not change),
    so the top token's logit is 0 and the others fall to −inf at worst: the distribution tends to greedy's
    one-hot (ties shared) instead of overflowing to NaN (τ = 1e-300 is then simply greedy)."""
    if temperature >= _TINY_TEMPERATURE:
        return logits / temperature
    top = logits.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # a row of −inf stays −inf, not NaN
    # In float64, where τ itself does not round to 0 (in float32 τ = 1e-300 would, and 0 / 0 is NaN).
    return ((logits.double() - top.double()) / temperature).to(logits.dtype)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row (ties with the k-th value are kept too); k <= 0 keeps everything."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose total probability reaches p (always at least one).

    Sorted from least to most likely, a token can go when the mass up to and including it is <= 1 − p: the
    tokens above it then still hold >= p.
    """
    if p >= 1.0:
        return logits
    ascending, order = torch.sort(logits, dim=-1)  # (B, V)
    mass_upto = ascending.softmax(-1).cumsum(-1)  # (B, V)
    drop_sorted = mass_upto <= 1 - p
    drop_sorted[..., -1] = False  # the most likely token always stays
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, NEG_INF)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least min_p times the top token's (the top one always stays)."""
    if min_p <= 0:
        return logits
    probs = logits.softmax(-1)  # (B, V)
    drop = probs < min_p * probs.amax(-1, keepdim=True)
    drop.scatter_(-1, probs.argmax(-1, keepdim=True), False)
    return logits.masked_fill(drop, NEG_INF)


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty on tokens already in the text, seen (B, V) bool: positive logits ÷ θ, negative × θ."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def presence_frequency_penalty(
    logits: torch.Tensor, counts: torch.Tensor, presence: float, frequency: float
) -> torch.Tensor:
    """OpenAI's penalties: logits − presence·[count > 0] − frequency·count, counts (B, V) of generated tokens."""
    if presence == 0 and frequency == 0:
        return logits
    return logits - presence * (counts > 0).to(logits.dtype) - frequency * counts.to(logits.dtype)


def banned_ngram_tokens(tokens: list[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already present in `tokens` (the last n − 1 tokens as its start)."""
    if n <= 0 or len(tokens) < n:
        return []
    if n == 1:
        return list(set(tokens))
    prefix = tokens[len(tokens) - n + 1 :]
    return [tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tokens[i : i + n - 1] == prefix]


def no_repeat_ngram(logits: torch.Tensor, rows: list[list[int]], n: int) -> torch.Tensor:
    """Forbid, in each row, every token that would repeat an n-gram of that row's text (prompt + generated)."""
    if n <= 0:
        return logits
    logits = logits.clone()
    for b, tokens in enumerate(rows):
        banned = banned_ngram_tokens(tokens, n)
        if banned:
            logits[b, banned] = NEG_INF
    return logits


def suppress_tokens(logits: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    """Forbid token_ids in every row (min_new_tokens keeps end-of-text away until enough tokens exist)."""
    if not token_ids:
        return logits
    logits = logits.clone()
    logits[:, token_ids] = NEG_INF
    return logits


def add_logit_bias(logits: torch.Tensor, bias: dict[int, float]) -> torch.Tensor:
    """Add bias[token] to that token's logit in every row (OpenAI's logit_bias; −100 bans, +100 forces)."""
    if not bias:
        return logits
    V = logits.shape[-1]
    bad = [t for t in bias if t >= V]
    if bad:
        from danlu.errors import DanluError

        raise DanluError(f"logit_bias names token ids {bad} but the vocabulary has {V} tokens (0..{V - 1})")
    ids = torch.tensor(list(bias), device=logits.device)
    values = torch.tensor(list(bias.values()), device=logits.device, dtype=logits.dtype)
    return logits.index_add(-1, ids, values.expand(logits.shape[0], -1))


@dataclass
class TokenHistory:
    """What the penalties need to know about each row's text, kept up to date step by step.

    seen (B, V) bool: tokens of the prompt or generated (repetition penalty); counts (B, V): how often each token
    was generated (presence / frequency); tokens: each row's ids (no-repeat-n-gram). Only what the options use is
    kept; padding never counts. grammar: the rows' JSON-schema matchers (grammar.JsonRows), fed the same tokens.
    """

    seen: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    tokens: list[list[int]] | None = None
    grammar: Any = None

    @classmethod
    def start(
        cls,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        V: int,
        opts: GenerationOptions,
        grammar: Any = None,
    ) -> TokenHistory:
        """grammar: a grammar.JsonConstraint (built from the tokenizer), or None."""
        B = input_ids.shape[0]
        h = cls(grammar=grammar.start(B) if grammar is not None else None)
        if opts.repetition_penalty != 1.0:
            in_prompt = torch.zeros(B, V, device=input_ids.device)
            in_prompt.scatter_add_(1, input_ids.clamp(0, V - 1), attention_mask.float())  # padding adds 0
            h.seen = in_prompt > 0
        if opts.presence_penalty != 0 or opts.frequency_penalty != 0:
            h.counts = torch.zeros(B, V, device=input_ids.device)
        if opts.no_repeat_ngram_size > 0:
            h.tokens = [row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask)]
        return h

    def append(self, tok: torch.Tensor) -> None:
        """Record the new token of every row, tok (B,)."""
        if self.seen is not None:
            self.seen.scatter_(1, tok[:, None], True)
        if self.counts is not None:
            self.counts.scatter_add_(1, tok[:, None], torch.ones_like(tok[:, None], dtype=self.counts.dtype))
        if self.tokens is not None:
            for row, t in zip(self.tokens, tok.tolist()):
                row.append(t)
        if self.grammar is not None:
            self.grammar.append(tok)

    def reorder(self, index: torch.Tensor) -> None:
        """Row i becomes old row index[i] (beam search)."""
        if self.seen is not None:
            self.seen = self.seen.index_select(0, index)
        if self.counts is not None:
            self.counts = self.counts.index_select(0, index)
        if self.tokens is not None:
            self.tokens = [list(self.tokens[i]) for i in index.tolist()]
        if self.grammar is not None:
            self.grammar.reorder(index)


def process_logits(
    scores: torch.Tensor,
    history: TokenHistory,
    opts: GenerationOptions,
    step: int,
    stop_ids: list[int],
) -> torch.Tensor:
    """Apply the penalties and constraints the options ask for to scores (B, V) at new-token index `step`.

    The order follows Hugging Face's (repetition, n-gram, min length), so that the same options give the same
    tokens; logit bias and the OpenAI penalties come next, and the grammar's mask last (it must hold whatever
    the others did). Sampling filters are `warp`'s job.
    """
    if history.seen is not None:
        scores = repetition_penalty(scores, history.seen, opts.repetition_penalty)
    if history.tokens is not None:
        scores = no_repeat_ngram(scores, history.tokens, opts.no_repeat_ngram_size)
    if step < opts.min_new_tokens:
        scores = suppress_tokens(scores, stop_ids)
    scores = add_logit_bias(scores, opts.logit_bias)
    if history.counts is not None:
        scores = presence_frequency_penalty(
            scores, history.counts, opts.presence_penalty, opts.frequency_penalty
        )
    if history.grammar is not None:
        scores = history.grammar.apply(scores)
    return scores


def warp(logits: torch.Tensor, opts: GenerationOptions) -> torch.Tensor:
    """The sampling filters, in Hugging Face's order: temperature, top-k, top-p, min-p."""
    logits = apply_temperature(logits, opts.temperature)
    logits = top_k_filter(logits, opts.top_k)
    logits = top_p_filter(logits, opts.top_p)
    return min_p_filter(logits, opts.min_p)
