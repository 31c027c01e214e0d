"""Weight quantisation for decoding (notes 002 §low-resource deployment).

Notation: x (..., K) activations, W (N, K) a linear layer's weight (N outputs, K inputs), G the group size.

Decoding one token reads every weight once and does ~2 FLOPs per weight: it is bound by memory bandwidth, so
storing weights in fewer bits makes it faster as well as smaller, while activations stay in full precision.
- int8, per output channel, symmetric: s_n = max_k |W_nk| / 127, q = round(W / s_n) in [-127, 127];
  y = (x qᵀ) · s. One scale per row keeps an outlier row from crushing the others' precision.
- int4, group-wise, asymmetric (as GPTQ/AWQ store it): each run of G inputs of a row has its own
  scale = (max − min) / 15 and zero point; q in [0, 15], W ≈ (q − 8) · scale + zero. Groups are needed at
  4 bits: one scale per row would leave too few levels for the typical weight.
Kernels. CUDA: the weight is dequantised on the fly, and under `torch.compile` the dequantisation fuses into
the matmul. CPU, eager: int8 runs in fbgemm's int8 GEMM with activations rounded to 8 bits per call ("dynamic"
quantisation, >2x faster than fp32 at batch 1); PyTorch's eager weight-only kernels are slower than fp32 there.
CPU, compiled (`compile=True`): every int8 and 4-bit layer becomes elementwise maths and a sum that inductor
fuses into one loop reading the small codes (`quant_kernels.py`), so the compiled step reads a quarter (int8)
or about a sixth (4-bit with fp16 group scales) of fp32's bytes. fbgemm's packed weights are opaque to dynamo,
so under compile a "dynamic" layer runs that weight-only loop too. 4-bit defaults to the group layout of
`quant_kernels.py` (GGUF Q4_1's); method="torch" keeps `_weight_int4pack_mm_for_cpu`, which stores the same
bits but is slower than fp32 for one-token decoding on the CPUs we measured.
Numbers: benchmarks/decode_speed.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from danlu.errors import DanluError
from danlu.generate.quant_kernels import BlockQuantLinear, int8_channel_product, quantize_groups


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8: weight (N, K) -> q (N, K) int8, scale (N,) with W ≈ q · scale."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)  # (N,)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group-wise asymmetric int4: weight (N, K) -> q (N, K) int32 in [0, 15], scale and zero (N, K / G)."""
    N, K = weight.shape
    w = weight.detach().float().view(N, K // group_size, group_size)  # (N, K/G, G)
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).clamp(min=1e-6)
    zero = lo + 8 * scale  # the value of the middle level q = 8
    q = torch.round((w - lo) / scale).clamp(0, 15).to(torch.int32)
    return q.view(N, K), scale.view(N, -1), zero.view(N, -1)


def _has_op(name: str) -> bool:
    return hasattr(torch.ops.aten, name)


def _fbgemm_pack(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    """fbgemm's packed int8 weight for `quantized::linear_dynamic`, or None where that kernel is missing."""
    if (
        "fbgemm" not in torch.backends.quantized.supported_engines
        and "x86" not in torch.backends.quantized.supported_engines
    ):
        return None
    try:
        with (
            warnings.catch_warnings()
        ):  # quantized tensors are deprecated in favour of torchao; the op remains
            warnings.simplefilter("ignore")
            zero = torch.zeros(q.shape[0], dtype=torch.long)
            qweight = torch._make_per_channel_quantized_tensor(q, scale.double(), zero, 0)
            return torch.ops.quantized.linear_prepack(
                qweight, None if bias is None else bias.detach().float()
            )
    except (RuntimeError, AttributeError):
        return None


class Int8Linear(nn.Module):
    """A linear layer with int8 per-channel weights; y = (x qᵀ) · scale + bias.

    activations="float" keeps x in full precision (weight-only: the weight is dequantised inside the matmul).
    activations="dynamic" (CPU) also rounds x to 8 bits per call, with its own scale, so the product runs in
    fbgemm's int8 kernel: for one-token decoding on CPU it is >2x faster than fp32, while PyTorch's CPU
    weight-only kernel (`_weight_int8pack_mm`) is several times *slower* than fp32 at batch 1.
    "auto" picks "dynamic" on CPU when fbgemm is available, else "float".
    """

    def __init__(self, linear: nn.Linear, activations: str = "auto") -> None:
        super().__init__()
        if activations not in ("auto", "dynamic", "float"):
            raise DanluError(f"activations must be 'auto', 'dynamic' or 'float', got {activations!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_int8(linear.weight)
        self.register_buffer("weight_int8", q)  # (N, K)
        self.register_buffer("scale", scale.to(linear.weight.dtype))  # (N,)
        self.bias = linear.bias
        self._packed = None
        on_cpu = linear.weight.device.type == "cpu"
        if activations != "float" and on_cpu:
            self._packed = _fbgemm_pack(q, scale, linear.bias)
        if activations == "dynamic" and self._packed is None:
            raise DanluError("activations='dynamic' needs PyTorch's fbgemm int8 kernel on CPU; use 'float'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        if torch.compiler.is_compiling() and x.device.type == "cpu":
            # dynamo cannot trace fbgemm's packed weight; the weight-only loop reads the same int8 codes
            y = int8_channel_product(x2, self.weight_int8, self.scale)
            if self.bias is not None:
                y = y + self.bias
            return y.view(*shape[:-1], self.out_features)
        if self._packed is not None and x.device.type == "cpu":
            # reduce_range: fbgemm's x86 kernel wants 7-bit activations to rule out int16 overflow.
            y = torch.ops.quantized.linear_dynamic(x2.float(), self._packed, True).to(x.dtype)
            return y.view(*shape[:-1], self.out_features)  # the bias is inside the packed weight
        y = F.linear(x2, self.weight_int8.to(x.dtype)) * self.scale.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    """A linear layer with group-wise int4 weights (two per byte); activations stay in full precision.

    The packed layout depends on the device's kernel: quantise the model on the device it will decode on.
    """

    def __init__(self, linear: nn.Linear, group_size: int = 32) -> None:
        super().__init__()
        N, K = linear.weight.shape
        if K % group_size:
            raise DanluError(f"int4 group_size {group_size} does not divide the layer's {K} inputs")
        self.in_features, self.out_features, self.group_size = K, N, group_size
        q, scale, zero = quantize_int4(linear.weight, group_size)
        self.cpu_kernel = (  # the CPU kernel tiles outputs by 16
            linear.weight.device.type == "cpu" and N % 16 == 0 and _has_op("_weight_int4pack_mm_for_cpu")
        )
        if self.cpu_kernel:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        else:
            packed = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)  # (N, K/2): low nibble first
        self.register_buffer("weight_int4", packed)
        # (K/G, N, 2): per group [scale, zero], the layout the CPU kernel reads
        self.register_buffer("scale_zero", torch.stack([scale, zero], -1).transpose(0, 1).contiguous())
        self.bias = linear.bias

    def dequantize(self) -> torch.Tensor:
        """The float weight (N, K) these codes stand for (not available for the CPU kernel's layout)."""
        if self.cpu_kernel:
            raise DanluError("this int4 layer uses the CPU kernel's packed layout; it has no plain codes")
        q = torch.stack([self.weight_int4 & 15, self.weight_int4 >> 4], -1).view(self.out_features, -1)
        scale, zero = self.scale_zero.transpose(0, 1).unbind(-1)  # (N, K/G) each
        groups = q.view(self.out_features, -1, self.group_size).float()  # (N, K/G, G)
        return ((groups - 8) * scale[..., None] + zero[..., None]).view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        if self.cpu_kernel:
            if x.device.type != "cpu":
                raise DanluError("this int4 model was quantised on CPU; quantise it again on its new device")
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2.float(), self.weight_int4, self.group_size, self.scale_zero
            ).to(x.dtype)
        else:
            y = F.linear(x2, self.dequantize().to(x.dtype))
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)


INT8_METHODS = ("auto", "dynamic", "weight_only")
INT4_METHODS = ("auto", "group", "torch")


def quantize_model(
    model: nn.Module,
    bits: int = 8,
    group_size: int = 32,
    activations: str = "auto",
    method: str = "auto",
) -> nn.Module:
    """Replace every nn.Linear of `model` (in place) by an int8 or 4-bit layer; returns the model.

    method, 8 bits: "dynamic" (fbgemm, activations rounded too, eagerly; CPU only), "weight_only" (activations
    in full precision), "auto" ("dynamic" on CPU where fbgemm exists). Under `compile=True` both run the same
    fused weight-only loop on CPU. `activations` is the older spelling ("float" = "weight_only").
    method, 4 bits: "group" (`quant_kernels.BlockQuantLinear`, GGUF Q4_1's layout, fast when compiled; the
    lm_head in 8-bit groups, Q8_0's), "torch" (PyTorch's `_weight_int4pack_mm_for_cpu` layout), "auto" = "group".
    Embeddings stay in full precision (decoding reads one row per token). A tied lm_head gets its own
    quantised copy of the embedding matrix: un-embedding reads all of it every step, so it pays the most.
    """
    if bits not in (4, 8):
        raise DanluError(f"bits must be 8 or 4, got {bits}")
    if bits == 4 and group_size not in (32, 64, 128, 256):
        raise DanluError(f"int4 group_size must be one of 32, 64, 128, 256, got {group_size}")
    methods = INT8_METHODS if bits == 8 else INT4_METHODS
    if method not in methods:
        raise DanluError(f"{bits}-bit method must be one of {', '.join(methods)}, got {method!r}")
    if bits == 8 and method != "auto":
        activations = "dynamic" if method == "dynamic" else "float"
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not targets:
        raise DanluError(f"{type(model).__name__} has no nn.Linear layers to quantise")
    for name, linear in targets:
        if bits == 4 and linear.in_features % group_size:
            raise DanluError(
                f"layer {name} (weight {tuple(linear.weight.shape)}) is too small to quantise to 4 bits in "
                f"groups of {group_size}: its {linear.in_features} inputs are not a multiple of the group; "
                "use --quantize int8 (or a smaller group_size)"
            )
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if bits == 8:
            new = Int8Linear(linear, activations)
        elif method == "torch":
            new = Int4Linear(linear, group_size)
        else:
            # the un-embedding keeps 8 bits, as llama.cpp's Q4 files keep theirs (Q8_0 or Q6_K): at 4 bits it
            # alone moved SmolLM2's perplexity by ~3%, for a sixth of the bytes
            head_bits = 8 if name == "lm_head" else 4
            new = quantize_groups(linear.weight, head_bits, group_size).to(linear.weight.device)
            if linear.bias is not None:
                new.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        setattr(parent, child, new)
    return model.eval()


def model_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers, counting shared tensors once."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def quantize_from_gguf(model: nn.Module, path: str | Path) -> tuple[nn.Module, list[str]]:
    """Replace `model`'s linear layers (a danlu GPT loaded from the GGUF file `path`) by the file's own Q8_0 /
    Q4_0 / Q4_1 blocks, bit for bit (`quant_kernels.BlockQuantLinear`), instead of re-quantising the fp32
    weights the loader dequantised. Layers stored in another type have no such fast path: they fall back to
    int8 (quantised from their dequantised weights), and the notes returned say which.
    Returns (model, notes): one line per kind of fallback, empty when every layer loaded straight."""
    from danlu.models.gguf import BLOCK_TYPES, config_from_gguf, linear_blocks_from_gguf, read_gguf

    f = read_gguf(path)
    blocks, missing = linear_blocks_from_gguf(f, config_from_gguf(f))
    for name, (bits, codes, scale, minimum) in blocks.items():
        linear = model.get_submodule(name)
        device = linear.weight.device
        new = BlockQuantLinear(bits, codes, scale, minimum, linear.bias).to(device)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    notes = []
    if missing:
        for name in missing:
            linear = model.get_submodule(name)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, Int8Linear(linear))
        kinds = sorted({why.rpartition(" is ")[2] for why in missing.values()})
        notes.append(
            f"{len(missing)} of {len(missing) + len(blocks)} linear layers are stored as {', '.join(kinds)}, "
            f"which has no fast path (danlu reads {', '.join(BLOCK_TYPES)} as stored): "
            f"they were quantised to int8 instead (first: {next(iter(missing))}: {next(iter(missing.values()))})"
        )
    return model.eval(), notes
