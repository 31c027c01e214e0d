"""Normalisation and feed-forward layers shared by every Transformer in danlu.

Notation: B batch, T time (sequence length), C channels (embedding width).

The "Add & Norm" of the Transformer (Vaswani et al. 2017, notes 003 §Add & Norm) is a residual connection plus a
normalisation; where the norm sits (after the residual: post-LN, the paper; before the sublayer: pre-LN, GPT-2 and
LLaMA) is chosen by each model, the layers here are only the pieces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from danlu.errors import DanluError


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), used by LLaMA: x / rms(x) * weight, no mean, no bias."""

    def __init__(self, C: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # PyTorch's one fused op (eager: one kernel instead of five), computed in fp32 inside as LLaMA does:
        # bf16 squares lose too much precision.
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class OffsetRMSNorm(nn.Module):
    """Gemma's RMSNorm: x / rms(x) * (1 + weight), the weight stored as an offset from 1 (zeros at init).

    The product is taken in fp32 before the cast back, as Gemma does (not the cast-then-multiply of LLaMA).
    A class of its own, not an RMSNorm flag, so code that reads `RMSNorm.weight` as the scale stays right.
    """

    def __init__(self, C: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).to(x.dtype)


NORMS = ("layernorm", "rmsnorm", "rmsnorm_1p")


def make_norm(kind: str, C: int, eps: float, bias: bool = True) -> nn.Module:
    """`layernorm` (GPT-2, BERT, the paper), `rmsnorm` (LLaMA) or `rmsnorm_1p` (Gemma: scale 1 + weight)."""
    if kind == "layernorm":
        return nn.LayerNorm(C, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(C, eps=eps)
    if kind == "rmsnorm_1p":
        return OffsetRMSNorm(C, eps=eps)
    raise DanluError(f"unknown norm {kind!r}; use one of {list(NORMS)}")


ACTIVATIONS = {
    "relu": F.relu,  # the original Transformer's FFN
    "gelu": F.gelu,  # BERT (exact erf form)
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's "gelu_new"
    "silu": F.silu,
}


class MLP(nn.Module):
    """The position-wise feed-forward network FFN(x) = act(x W1 + b1) W2 + b2 (Vaswani et al. 2017, eq. 2)."""

    def __init__(self, C: int, hidden: int, activation: str = "gelu_tanh", bias: bool = True) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise DanluError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.act = ACTIVATIONS[activation]
        self.fc = nn.Linear(C, hidden, bias=bias)
        self.proj = nn.Linear(hidden, C, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class GatedMLP(nn.Module):
    """A gated FFN (Shazeer 2020, "GLU Variants"): W_down( act(x W_gate) * (x W_up) ).

    act = silu is SwiGLU (LLaMA, Qwen, Mistral, Phi-3, OLMo-2); act = tanh-GELU is GeGLU (Gemma).
    """

    def __init__(self, C: int, hidden: int, bias: bool = False, activation: str = "silu") -> None:
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.gate = nn.Linear(C, hidden, bias=bias)
        self.up = nn.Linear(C, hidden, bias=bias)
        self.down = nn.Linear(hidden, C, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


class SwiGLU(GatedMLP):
    """LLaMA's gated FFN: W_down( silu(x W_gate) * (x W_up) )."""

    def __init__(self, C: int, hidden: int, bias: bool = False) -> None:
        super().__init__(C, hidden, bias=bias, activation="silu")


GATED_MLPS = {"swiglu": "silu", "geglu_tanh": "gelu_tanh"}  # mlp kind -> the gate's activation


def make_mlp(kind: str, C: int, hidden: int, bias: bool) -> nn.Module:
    """`swiglu` (LLaMA) or `geglu_tanh` (Gemma), otherwise a two-layer MLP with the named activation."""
    if kind == "swiglu":
        return SwiGLU(C, hidden, bias=bias)
    if kind in GATED_MLPS:
        return GatedMLP(C, hidden, bias=bias, activation=GATED_MLPS[kind])
    return MLP(C, hidden, activation=kind, bias=bias)
