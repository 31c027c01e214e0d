"""Position information: sinusoidal (the paper), learned (GPT-2, BERT) and rotary (RoPE, LLaMA).

Notation: B batch, T time, n_head heads, head_size channels per head.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from danlu.errors import DanluError

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


def rope_cache(
    T: int, head_size: int, theta: float = 10000.0, scaling: dict[str, Any] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for rotary embeddings (Su et al. 2021), each (T, head_size).

    Frequencies theta^(-2i/head_size), optionally rescaled for a longer context (`rope_frequencies`); the table
    is duplicated across the two halves because we rotate the pair (x_i, x_{i + head_size/2}) — the "rotate
    half" layout Hugging Face LLaMA weights are stored in.
    """
    inv_freq, attention_factor = rope_frequencies(head_size, theta, scaling)  # (hs/2,)
    angles = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)  # (T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hs)
    if attention_factor != 1.0:  # YaRN scales q·k by attention_factor² through both tables
        return angles.cos() * attention_factor, angles.sin() * attention_factor
    return angles.cos(), angles.sin()


ROPE_SCALINGS = ("linear", "llama3", "yarn")


def rope_frequencies(
    head_size: int, theta: float, scaling: dict[str, Any] | None = None
) -> tuple[torch.Tensor, float]:
    """(inv_freq (head_size/2,), attention_factor) of RoPE, plain or with `scaling` (a checked dict):

    - `linear` (position interpolation, Chen et al. 2023): every frequency / factor;
    - `llama3` (Llama 3.1): wavelengths shorter than original/high_freq_factor are kept, those longer than
      original/low_freq_factor are divided by factor, and in between the two are blended by
      s = (original/wavelength - low) / (high - low): (1 - s)·f/factor + s·f;
    - `yarn` (Peng et al. 2023, "YaRN"): dimensions that rotate fewer than beta_slow times over the original
      context are interpolated (f / factor), those rotating more than beta_fast times kept, a linear ramp in
      between; the logits are scaled by attention_factor (default 0.1·ln(factor) + 1, the paper's eq. 22).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size))  # (hs/2,)
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "default":
        return inv_freq, 1.0
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor, 1.0
    original = float(scaling["original_max_position_embeddings"])
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        wavelength = 2 * math.pi / inv_freq
        scaled = torch.where(wavelength > original / low, inv_freq / factor, inv_freq)
        smooth = (original / wavelength - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelength >= original / high) & (wavelength <= original / low)
        return torch.where(medium, blended, scaled), 1.0
    if kind == "yarn":
        beta_fast, beta_slow = float(scaling.get("beta_fast", 32.0)), float(scaling.get("beta_slow", 1.0))

        def dim_of(rotations: float) -> float:  # the dimension that turns `rotations` times over `original`
            return head_size * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        lo, hi = dim_of(beta_fast), dim_of(beta_slow)
        if scaling.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, head_size - 1)
        hi = hi + 0.001 if hi == lo else hi  # a zero-width ramp would divide by zero
        ramp = ((torch.arange(head_size // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)
        keep = 1 - ramp  # 1: extrapolate (keep f), 0: interpolate (f / factor)
        inv_freq = inv_freq / factor * (1 - keep) + inv_freq * keep
        attention_factor = scaling.get("attention_factor")
        if attention_factor is None:
            attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
        return inv_freq, float(attention_factor)
    raise DanluError(f"RoPE scaling {kind!r} is not supported; supported: {list(ROPE_SCALINGS)}")


def rope_scaling_problems(scaling: dict[str, Any]) -> list[str]:
    """What is wrong with a rope_scaling dict (from a config file), as actionable messages; [] when fine."""
    kind = scaling.get("rope_type")
    if kind not in ROPE_SCALINGS:
        return [f"rope_scaling rope_type must be one of {list(ROPE_SCALINGS)}, got {kind!r}"]
    need = {"linear": ["factor"], "llama3": ["factor", "low_freq_factor", "high_freq_factor",
            "original_max_position_embeddings"], "yarn": ["factor", "original_max_position_embeddings"]}[kind]  # fmt: skip
    known = {*need, "rope_type", "beta_fast", "beta_slow", "attention_factor", "truncate"}
    problems = [f"rope_scaling ({kind}) needs {k}" for k in need if k not in scaling]
    problems += [f"rope_scaling ({kind}) has unknown key {k!r}" for k in sorted(set(scaling) - known)]
    for k, v in scaling.items():
        if k in ("rope_type", "truncate") or k not in known:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            problems.append(f"rope_scaling {k} must be a positive number, got {v!r}")
    if not problems and kind == "llama3" and scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        problems.append("rope_scaling high_freq_factor must be larger than low_freq_factor")
    if "truncate" in scaling and not isinstance(scaling["truncate"], bool):
        problems.append(f"rope_scaling truncate must be true or false, got {scaling['truncate']!r}")
    return problems


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, n_head, T, head_size) by position: x·cos + rotate_half(x)·sin, cos/sin (B or 1, 1, T, hs)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat([-x2, x1], dim=-1)  # (B, n_head, T, head_size)
    return (x * cos + rotated * sin).to(x.dtype)
