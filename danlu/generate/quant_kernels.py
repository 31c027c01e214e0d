"""Block-quantised linear layers whose batch-1 product `torch.compile` turns into one fused CPU loop.

Notation: x (M, K) activations, W (N, K) a weight (N outputs, K inputs), G the group (block) size, g = k // G.

Decoding reads every weight once per token, so its speed is the bytes read. PyTorch's CPU kernels for small
weights (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`, or dequantising then `F.linear`) expand the
weight before multiplying and end up slower than fp32 at M = 1. Here the product is written as elementwise
maths and a sum, and inductor's CPU code generator fuses it into one loop per output row: load 16 packed bytes,
unpack the two nibbles with `& 15` and `>> 4` in vector registers, scale, multiply by x, accumulate, with one
horizontal sum per output (docs/BENCHMARKS.md, "Quantised decoding"). Eagerly (prefill, evaluation) the same
layer dequantises its weight and calls `F.linear`: correct, but only the compiled decode step is fast.
Faster still, on CPU for float32 inputs of a few rows (decoding), eager or compiled: danlu's own C++ kernel
(`cpu_kernels.py`), which rounds the activations to int8 per block and uses integer dot products; the two
paths above are its fallback (no compiler, many rows, other dtypes or devices).

Layouts (GGUF's own, so a llama.cpp file's blocks load without re-quantising, `models/gguf.py`):
- 8 bits: codes int8 (N, K), scale (N, K/G); W[n, k] = scale[n, g] · q[n, k]  (GGUF Q8_0 with G = 32).
- 4 bits: codes uint8 (N, K/2); byte j of a group holds element j in its low nibble and element j + G/2 in its
  high nibble; scale and minimum (N, K/G); W[n, k] = scale[n, g] · q[n, k] + minimum[n, g], q in [0, 15]
  (GGUF Q4_1; Q4_0 is minimum = −8 · scale).
Scales are stored in float16, as GGUF stores them: at G = 32 fp32 scales and minimums would add half again to
a 4-bit weight's bytes.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from danlu.errors import DanluError
from danlu.generate import cpu_kernels
from danlu.nn.layers import GatedMLP


def int8_channel_product(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (M, K) · (scale[:, None] · q)ᵀ for q (N, K) int8, scale (N,) -> (M, N), written for inductor."""
    return (x[:, None, :] * q.to(x.dtype)).sum(-1) * scale.to(x.dtype)  # (M, N, K) summed over K


def int8_group_product(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (M, K) · Wᵀ for 8-bit group codes q (N, K), scale (N, K/G) -> (M, N), written for inductor."""
    M, K = x.shape
    N, n_groups = scale.shape
    G = K // n_groups
    xg = x.view(M, 1, n_groups, G)  # (M, 1, K/G, G)
    w = q.view(N, n_groups, G).to(x.dtype) * scale.to(x.dtype)[..., None]  # (N, K/G, G)
    return (xg * w).sum((-1, -2))  # (M, N)


def int4_group_product(
    x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor
) -> torch.Tensor:
    """x (M, K) · Wᵀ for 4-bit group codes (N, K/2) uint8, scale and minimum (N, K/G) -> (M, N)."""
    M, K = x.shape
    N, n_groups = scale.shape
    G = K // n_groups
    xg = x.view(M, 1, n_groups, 2, G // 2)  # (M, 1, K/G, 2, G/2): the low- and high-nibble halves
    packed = codes.view(N, n_groups, G // 2)  # (N, K/G, G/2)
    lo, hi = (packed & 15).to(x.dtype), (packed >> 4).to(x.dtype)
    s, m = scale.to(x.dtype)[..., None], minimum.to(x.dtype)[..., None]  # (N, K/G, 1)
    return (xg[..., 0, :] * (lo * s + m) + xg[..., 1, :] * (hi * s + m)).sum((-1, -2))  # (M, N)


def pack_int4(q: torch.Tensor, group_size: int) -> torch.Tensor:
    """Codes q (N, K) in [0, 15] -> (N, K/2) uint8 in the layout above (element j with element j + G/2)."""
    N, K = q.shape
    g = q.to(torch.uint8).view(N, K // group_size, 2, group_size // 2)  # (N, K/G, 2, G/2)
    return (g[:, :, 0] | (g[:, :, 1] << 4)).reshape(N, K // 2)


def unpack_int4(codes: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N, K/2) uint8 -> codes (N, K) uint8 in [0, 15] (the inverse of `pack_int4`)."""
    N = codes.shape[0]
    g = codes.view(N, -1, group_size // 2)  # (N, K/G, G/2)
    return torch.stack([g & 15, g >> 4], 2).reshape(N, -1)  # (N, K/G, 2, G/2) -> (N, K)


class BlockQuantLinear(nn.Module):
    """A linear layer holding 8- or 4-bit group-quantised weights (layouts in the module docstring).

    kernel_rows: inputs of up to this many rows take `cpu_kernels`' int8-activation kernel where it applies
    (0: never, the PyTorch paths only; a large value: always, e.g. to measure its perplexity). On by default
    (DANLU_CPU_KERNEL=0 at import opts out): its outputs are the dequantised weight times the activations
    rounded to int8 per block of 32, as llama.cpp's own Q4/Q8 kernels compute them; on SmolLM2-135M-Instruct
    its next-token logits on a chat prompt are closer to llama.cpp's than the float activations' are (the
    same argmax at every position), and its perplexity is within 1% of the float activations'
    (docs/BENCHMARKS.md, "The kernel checked against llama.cpp"; benchmarks/kernel_vs_llama_cpp.py).
    Rounding still flips near ties: "What is the capital of France?" has a 0.08 logit margin in fp32, and
    both llama.cpp and the kernel answer "L'Étoile, ..." where float activations say Paris.
    """

    kernel_rows: int = 0 if os.environ.get("DANLU_CPU_KERNEL") == "0" else cpu_kernels.MAX_ROWS

    def __init__(
        self,
        bits: int,
        codes: torch.Tensor,
        scale: torch.Tensor,
        minimum: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if bits not in (4, 8):
            raise DanluError(f"BlockQuantLinear holds 8- or 4-bit codes, got bits={bits}")
        N, n_groups = scale.shape
        K = codes.shape[1] * (2 if bits == 4 else 1)
        if codes.shape[0] != N or K % n_groups or (bits == 4 and minimum is None):
            raise DanluError(
                f"codes {tuple(codes.shape)} and scales {tuple(scale.shape)} do not fit {bits} bits"
            )
        self.bits, self.in_features, self.out_features, self.group_size = bits, K, N, K // n_groups
        self.register_buffer("codes", codes.contiguous())
        self.register_buffer("scale", scale.to(torch.float16).contiguous())
        self.register_buffer("minimum", None if minimum is None else minimum.to(torch.float16).contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight (N, K) these codes stand for."""
        G = self.group_size
        if self.bits == 8:
            w = self.codes.float().view(self.out_features, -1, G) * self.scale.float()[..., None]
        else:
            q = unpack_int4(self.codes, G).float().view(self.out_features, -1, G)  # (N, K/G, G)
            w = q * self.scale.float()[..., None] + self.minimum.float()[..., None]
        return w.view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        if cpu_kernels.applies(x2, self.group_size, self.kernel_rows):  # danlu's integer kernel, a few rows
            y = cpu_kernels.block_matmul(x2, self.codes, self.scale, self.minimum)
        elif torch.compiler.is_compiling():  # the fused loop (module docstring)
            if self.bits == 8:
                y = int8_group_product(x2, self.codes, self.scale)
            else:
                y = int4_group_product(x2, self.codes, self.scale, self.minimum)
        else:  # eager: expand once per call (prefill, evaluation)
            y = F.linear(x2, self.dequantize().to(x.dtype))
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group={self.group_size}"


def quantize_groups(weight: torch.Tensor, bits: int, group_size: int) -> BlockQuantLinear:
    """Group-wise quantisation of a float weight (N, K): 8 bits symmetric (Q8_0's rule), 4 bits asymmetric
    (Q4_1's: scale = (max − min) / 15, minimum = min) -> a BlockQuantLinear."""
    N, K = weight.shape
    w = weight.detach().float().view(N, K // group_size, group_size)  # (N, K/G, G)
    if bits == 8:
        # scales are stored in fp16: quantise with the rounded scale so codes and scale agree exactly
        scale = (w.abs().amax(-1) / 127).clamp(min=1e-8).half().float()  # (N, K/G)
        q = torch.round(w / scale[..., None]).clamp(-127, 127).to(torch.int8)
        return BlockQuantLinear(8, q.view(N, K), scale)
    lo, hi = w.amin(-1), w.amax(-1)  # (N, K/G)
    scale = ((hi - lo) / 15).clamp(min=1e-8).half().float()
    lo = lo.half().float()
    q = torch.round((w - lo[..., None]) / scale[..., None]).clamp(0, 15)
    return BlockQuantLinear(4, pack_int4(q.view(N, K), group_size), scale, lo)


def reference_matmul(
    x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None
) -> torch.Tensor:
    """What the kernel computes, in PyTorch: x rounded to int8 per block (round half to even of x · (1/dx),
    dx = max|x| / 127), integer block dot products with the codes, scaled by d · dx, plus the minimum times
    the rounded blocks' sums dx · Σ qx: exactly the dequantised weight times the rounded activations. The
    tests compare the kernel (generate/cpu_kernels.py) with it."""
    M, K = x.shape
    N, nb = scale.shape
    xb = x.float().view(M, nb, cpu_kernels.GROUP)  # (M, nb, 32)
    dx = xb.abs().amax(-1) / 127  # (M, nb)
    inv = torch.where(dx > 0, 1 / dx, torch.zeros_like(dx))
    qx = torch.round(xb * inv[..., None]).to(torch.int64)  # (M, nb, 32)
    q = unpack_int4(codes, cpu_kernels.GROUP) if codes.dtype == torch.uint8 else codes
    q = q.to(torch.int64).view(N, nb, cpu_kernels.GROUP)  # (N, nb, 32)
    dots = torch.einsum("mgk,ngk->mng", qx, q).double()  # (M, N, nb): exact integers
    y = (dots * (scale.double()[None] * dx.double()[:, None])).sum(-1)  # (M, N)
    if minimum is not None:
        sx = qx.sum(-1).double() * dx.double()  # (M, nb): the sum of the rounded block, dx * sum(qx)
        y = y + sx @ minimum.double().T  # the minimum's term: (M, nb) @ (nb, N)
    return y.float()


class FusedGatedMLP(nn.Module):
    """A gated FFN (nn.layers.GatedMLP) whose gate and up rows are one BlockQuantLinear: at batch 1 they read
    the same x, so one product rounds x once and makes one pass over the threads instead of two (30 fewer
    kernel calls a token for SmolLM2). Each output row is computed alone, so the result equals the two layers'."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        gate, up = mlp.gate, mlp.up
        self.act, self.down, self.hidden = mlp.act, mlp.down, gate.out_features
        minimum = None if gate.minimum is None else torch.cat([gate.minimum, up.minimum])
        self.gate_up = BlockQuantLinear(
            gate.bits, torch.cat([gate.codes, up.codes]), torch.cat([gate.scale, up.scale]), minimum
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.hidden, dim=-1)  # (..., hidden) each
        return self.down(self.act(gate) * up)


def fuse_gate_up(model: nn.Module) -> int:
    """Replace every gated FFN of `model` whose gate and up are BlockQuantLinear layers of one format (no bias)
    by a FusedGatedMLP; returns how many were fused."""
    fused = 0
    for name, mlp in list(model.named_modules()):
        gate, up = getattr(mlp, "gate", None), getattr(mlp, "up", None)
        if not isinstance(mlp, GatedMLP) or not all(isinstance(m, BlockQuantLinear) for m in (gate, up)):
            continue
        if (gate.bits, gate.group_size, gate.in_features) != (up.bits, up.group_size, up.in_features):
            continue
        if gate.bias is not None or up.bias is not None:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, FusedGatedMLP(mlp))
        fused += 1
    return fused
