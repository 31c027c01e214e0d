"""Position information: sinusoidal (the paper), learned (GPT-2, BERT) and rotary (RoPE, LLaMA).

Notation: B batch, T time, n_head heads, head_size channels per head.
"""

from __future__ import annotations

import math

import torch

# Position tables (RoPE cos/sin, sinusoids) are computed, not stored: a table starts this long (or the model's
# context, if shorter) and grows when a longer sequence runs, so a config claiming a context of 1e8 positions
# costs nothing until such a sequence is run. Learned positions are weights, sized by the tensor in the file.
INITIAL_POSITIONS = 8192


def grown_length(needed: int, current: int, limit: int) -> int:
    """The length to (re)build a position table to so that it covers `needed` positions: at least double the
    current one (few rebuilds), never past the model's context `limit`."""
    return min(limit, max(needed, 2 * current, min(INITIAL_POSITIONS, limit)))


def sinusoidal_positions(T: int, C: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/C)), PE(pos, 2i+1) = cos(...) (Vaswani et al. 2017, §3.5). -> (T, C)."""
    pos = torch.arange(T, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    inv_freq = torch.exp(torch.arange(0, C, 2, dtype=torch.float32) * (-math.log(10000.0) / C))  # (C/2,)
    pe = torch.zeros(T, C)
    pe[:, 0::2] = torch.sin(pos * inv_freq)
    pe[:, 1::2] = torch.cos(pos * inv_freq[: C // 2])
    return pe


def rope_cache(T: int, head_size: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for rotary embeddings (Su et al. 2021), each (T, head_size).

    Frequencies theta^(-2i/head_size); the table is duplicated across the two halves because we rotate the pair
    (x_i, x_{i + head_size/2}) — the "rotate half" layout Hugging Face LLaMA weights are stored in.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size))  # (hs/2,)
    angles = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)  # (T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hs)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, n_head, T, head_size) by position: x·cos + rotate_half(x)·sin, cos/sin (B or 1, 1, T, hs)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat([-x2, x1], dim=-1)  # (B, n_head, T, head_size)
    return (x * cos + rotated * sin).to(x.dtype)
