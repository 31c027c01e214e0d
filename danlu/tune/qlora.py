"""QLoRA: LoRA on a frozen base held in 4-bit NormalFloat or int8 (Dettmers et al. 2023).

Fine-tuning memory is dominated by the frozen weights once LoRA has removed their gradients and optimizer
state; storing them in 4 bits (an eighth of fp32) lets a bigger base fit. Each frozen linear layer keeps only
its codes and scales, and every forward *and* backward pass dequantises the weight it needs on the fly:

    y = x · dequant(W)ᵀ + (α / r) · B A x,     ∂L/∂x = ∂L/∂y · dequant(W)   (W gets no gradient)

so no full-precision copy of W outlives one matmul (`_FrozenMatmul` saves the codes for backward, not the
dequantised matrix, as QLoRA's paged kernels do).

NF4 (the paper's §3): the 16 levels are quantiles of N(0, 1) scaled to [−1, 1], with an exact 0; weights
are cut into blocks of 64, each stored as its absmax (the scale) and 4-bit indices of the nearest level.
Pre-trained weights are roughly normal, so equal-probability levels waste fewer codes than a uniform grid.
int8: per output row, symmetric, W ≈ q · s with s = max|W_row| / 127 (as `danlu.generate.quantize`).

Notation: x (..., K) activations, W (N, K) a linear layer's weight, G the block size.
"""

from __future__ import annotations

import torch
from torch import nn

from danlu.errors import DanluError

__all__ = ["NF4_LEVELS", "nf4_levels", "QuantizedLinear", "quantize_frozen_base", "dequantize_base"]

BITS = (4, 8)
NF4_BLOCK = 64


def nf4_levels() -> torch.Tensor:
    """The 16 NF4 values: 8 positive and 7 negative normal quantiles plus 0, divided by the largest.

    The outermost quantile is taken at probability δ = ½(1/32 + 1/30) instead of 1 (where Φ⁻¹ is infinite),
    the paper's choice that makes ±1 the extremes after scaling.
    """
    delta = 0.5 * (1 / 32 + 1 / 30)
    positive = torch.special.ndtri(torch.linspace(1 - delta, 0.5, 9, dtype=torch.float64)[:-1])  # 8 values
    negative = -torch.special.ndtri(torch.linspace(1 - delta, 0.5, 8, dtype=torch.float64)[:-1])  # 7 values
    levels = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return (levels / levels.max()).float()


NF4_LEVELS = nf4_levels()


class _FrozenMatmul(torch.autograd.Function):
    """y = x Wᵀ with W rebuilt from its codes in forward and again in backward; only x gets a gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: QuantizedLinear) -> torch.Tensor:  # noqa: ANN001
        ctx.layer = layer
        return x @ layer.dequantize(x.dtype).t()

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):  # noqa: ANN001, ANN205
        return grad_y @ ctx.layer.dequantize(grad_y.dtype), None


class QuantizedLinear(nn.Module):
    """A frozen linear layer stored in NF4 (4 bits, blocks of 64) or int8 (per row); bias kept as is."""

    def __init__(self, linear: nn.Linear, bits: int = 4) -> None:
        super().__init__()
        if bits not in BITS:
            raise DanluError(f"--quantize-base: {bits} bits is not supported; choose 4 (NF4) or 8 (int8)")
        w = linear.weight.detach().float()
        N, K = w.shape
        self.in_features, self.out_features, self.bits = K, N, bits
        self.dtype = linear.weight.dtype
        if bits == 8:
            scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)  # (N,)
            self.register_buffer("codes", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scale", scale)
        else:
            if (N * K) % (2 * NF4_BLOCK):
                raise DanluError(
                    f"--quantize-base 4: a layer of shape ({N}, {K}) does not split into NF4 blocks of "
                    f"{NF4_BLOCK} weights; use --quantize-base 8"
                )
            blocks = w.reshape(-1, NF4_BLOCK)  # (N·K/G, G)
            absmax = blocks.abs().amax(dim=1).clamp(min=1e-12)  # (N·K/G,)
            normed = blocks / absmax[:, None]
            index = (normed[..., None] - NF4_LEVELS).abs().argmin(-1).to(torch.uint8).reshape(-1)  # (N·K,)
            self.register_buffer("codes", index[0::2] | (index[1::2] << 4))  # (N·K/2,): two codes per byte
            self.register_buffer("scale", absmax)
            self.register_buffer("levels", NF4_LEVELS.clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight (N, K) that the codes stand for."""
        if self.bits == 8:
            w = self.codes.float() * self.scale[:, None]
        else:
            index = (
                torch.stack([self.codes & 15, self.codes >> 4], -1).reshape(-1, NF4_BLOCK).long()
            )  # (N·K/G, G)
            w = (self.levels[index] * self.scale[:, None]).reshape(self.out_features, self.in_features)
        return w.to(dtype or self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _FrozenMatmul.apply(x, self)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        kind = "nf4" if self.bits == 4 else "int8"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}"


def quantize_frozen_base(model: nn.Module, bits: int) -> list[str]:
    """Replace every frozen nn.Linear of `model` (a LoRA layer's base included) by a QuantizedLinear.

    The head and the embeddings stay in full precision: the head is usually tied to the embedding, and both
    are read row by row or once per token. Returns the names of the quantised layers. A LoRA layer's base is
    the child module `<name>.base`, frozen by LoRALinear, so it is found like any frozen linear (this module
    needs nothing of tune/lora.py, which imports it).
    """
    names = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or name.endswith("lm_head"):
            continue
        if any(p.requires_grad for p in module.parameters()):
            continue  # a trainable layer (not a frozen base) keeps its precision
        _replace(model, name, QuantizedLinear(module, bits))
        names.append(name)
    if not names:
        raise DanluError("--quantize-base: the model has no frozen linear layer to quantise")
    return names


def dequantize_base(model: nn.Module) -> nn.Module:
    """Put plain nn.Linear layers (dequantised weights, the base's dtype) back in place of QuantizedLinear."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, QuantizedLinear):
            continue
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        linear = linear.to(device=module.codes.device, dtype=module.dtype)
        with torch.no_grad():
            linear.weight.copy_(module.dequantize())
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        linear.requires_grad_(False)
        _replace(model, name, linear)
    return model


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
