"""Logits processors: pure functions (B, V) -> (B, V) that reshape the next-token distribution.

Notes 002 §decoding: temperature sharpens or flattens softmax(logits / τ); top-k keeps the k most likely tokens;
top-p (nucleus, Holtzman et al. 2020) keeps the smallest set whose cumulative probability reaches p.
Removed tokens get −inf, so softmax gives them probability 0.
"""

from __future__ import annotations

import torch

from danlu.errors import DanluError


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / τ (τ > 0); τ → 0 approaches greedy, τ > 1 flattens."""
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row (ties at the k-th value are kept too)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose total probability reaches p (always at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(-1)
    # A token is dropped when the mass of the tokens ranked strictly above it already reaches p.
    mass_before = probs.cumsum(-1) - probs
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def validate_options(temperature: float, top_k: int, top_p: float, max_new_tokens: int) -> None:
    """Raise a DanluError naming the option and its allowed range."""
    if not temperature >= 0:
        raise DanluError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise DanluError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise DanluError(f"top_k must be >= 0 (0 disables it), got {top_k}")
    if max_new_tokens < 1:
        raise DanluError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


def next_token(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token per row from last-position logits (B, V): greedy at τ = 0, else sample. -> (B,)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = apply_temperature(logits.float(), temperature)
    logits = top_k_filter(logits, top_k)
    logits = top_p_filter(logits, top_p)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
