"""Which decoding path `danlu generate` / `chat` / `serve` take when no flag says: the fastest measured one.

Measured (docs/BENCHMARKS.md, "Decoding", SmolLM2-135M, 2 CPU threads, batch 1): on CPU the compiled step beats
the eager one (fp32: 1.46x HF against 1.16x), and a quantised GGUF decodes fastest from its own blocks with the
step compiled (`quantize.quantize_from_gguf`, `quant_kernels.py`); eagerly those blocks are dequantised per
call, so they are only chosen with the compiler. On CUDA the compiled step is a CUDA graph. Compiling costs a
wait on the first call (about a minute on a CPU, seconds once inductor's FX graph cache on disk holds the step),
which a tiny model's short decodes never earn back: below AUTO_COMPILE_MIN_PARAMS the eager step stays.
Quantising a float checkpoint changes its outputs, so it happens only when asked (`--quantize int8|int4`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from danlu.errors import DanluError

if TYPE_CHECKING:  # the CLI imports QUANTIZE_CHOICES while building its parser: no torch at that point
    from torch import nn

QUANTIZE_CHOICES = ("auto", "none", "int8", "int4", "gguf")
AUTO_COMPILE_MIN_PARAMS = 50_000_000  # SmolLM2-135M compiles by default; the test suite's tiny models do not


def compiler_available() -> bool:
    """Whether torch.compile can build CPU kernels here: inductor's C++ code needs a C++ compiler."""
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def inductor_cache_dir() -> str:
    """Where inductor keeps compiled kernels between runs (TORCHINDUCTOR_CACHE_DIR, else its default)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        return cache_dir()
    except ImportError:  # an older layout of torch's internals: name the variable instead
        return os.environ.get("TORCHINDUCTOR_CACHE_DIR", "torch's default inductor cache")


def gguf_block_types(path: str | Path) -> set[str]:
    """The block types (Q8_0, Q4_0, Q4_1) a GGUF file's 2-D tensors are stored in; empty for other files."""
    if not str(path).endswith(".gguf") or not Path(path).is_file():
        return set()
    from danlu.models.gguf import BLOCK_TYPES, read_gguf

    f = read_gguf(path)
    return {t.type_name for t in f.tensors.values() if len(t.shape) == 2} & set(BLOCK_TYPES)


@dataclass
class DecodingChoice:
    model: nn.Module
    compile: bool
    message: str  # one line for stderr: what was chosen and how to change it


def choose_decoding(
    model: nn.Module, path: str | Path, quantize: str = "auto", compile: bool | None = None
) -> DecodingChoice:
    """Quantise `model` (loaded from `path`) and decide on compiling, by the flags or, where they are "auto" /
    None, by the measurements in the module docstring."""
    from danlu.generate.quantize import quantize_from_gguf, quantize_model

    if quantize not in QUANTIZE_CHOICES:
        raise DanluError(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {quantize!r}")
    device = next(model.parameters()).device
    blocks = gguf_block_types(path) if quantize in ("auto", "gguf") else set()
    if quantize == "gguf" and not blocks:
        raise DanluError(
            f"--quantize gguf reads a GGUF file's Q8_0 / Q4_0 / Q4_1 blocks, and {path} has none; "
            "use --quantize int8 or int4 to quantise its weights"
        )
    notes: list[str] = []
    can_compile = device.type == "cuda" or compiler_available()
    if compile and not can_compile:
        notes.append(
            "--compile: no C++ compiler (g++/c++/clang++) for torch.compile's CPU kernels: eager step"
        )
    if quantize == "auto":  # GGUF blocks only pay compiled (module docstring)
        quantize = (
            "gguf" if blocks and device.type == "cpu" and can_compile and compile is not False else "none"
        )
    weights = "float weights"
    if quantize == "gguf":
        model, fallbacks = quantize_from_gguf(model, path)
        notes += fallbacks
        weights = f"the GGUF's {'/'.join(sorted(blocks))} blocks as stored"
    elif quantize in ("int8", "int4"):
        model = quantize_model(model, bits=8 if quantize == "int8" else 4)
        weights = f"{quantize} weights"
    if compile is None:
        n_params = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
        compile = can_compile and (quantize in ("gguf", "int4") or n_params >= AUTO_COMPILE_MIN_PARAMS)
    compile = bool(compile and can_compile)
    step = "compiled step" if compile else "eager step"
    message = f"decoding: {weights}, {step} on {device.type} (--quantize, --compile/--no-compile to change)"
    if compile:
        message += (
            f"; the first reply waits for torch.compile (about a minute on a CPU, seconds once cached in "
            f"{inductor_cache_dir()})"
        )
    if notes:
        message += "; " + "; ".join(notes)
    return DecodingChoice(model, compile, message)
