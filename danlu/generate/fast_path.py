"""Which decoding path `danlu generate` / `chat` / `serve` take when no flag says: the fastest measured one.

Measured (docs/BENCHMARKS.md, "Decoding", SmolLM2-135M, 2 CPU threads, batch 1): on CPU the compiled step beats
the eager one (fp32: 1.46x HF against 1.16x), and a quantised GGUF decodes fastest from its own blocks with the
step compiled (`quantize.quantize_from_gguf`, `quant_kernels.py`); eagerly those blocks are dequantised per
call, so they are only chosen with the compiler. On CUDA the compiled step is a CUDA graph. Compiling costs a
wait on the first call (about a minute on a CPU, seconds once inductor's FX graph cache on disk holds the step),
which a tiny model's short decodes never earn back: below AUTO_COMPILE_MIN_PARAMS the eager step stays.
Quantising a float checkpoint changes its outputs, so it happens only when asked (`--quantize int8|int4`).

The library call `danlu.generate(model, tokenizer, prompt)` makes the same choice (`library_decoding`) for the
model object it is given: `danlu.load(x.gguf)` records the file and its block types on the model
(`models/gguf.GGUFSource`), and while the weights are still the loaded ones (a fingerprint of every weight's
storage and version counter) the blocks decode on a twin sharing the model's other parameters, so the model
itself keeps float weights for training. The twin is the same model: the loader's fp32 weights are those blocks
dequantised (tests/generate/test_fast_path.py: equal logits).
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
from dataclasses import dataclass, field
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
    from danlu.models.gguf import block_types, read_gguf

    return block_types(read_gguf(path))


CLI_HINT = "--quantize, --compile/--no-compile to change"


@dataclass
class DecodingChoice:
    model: nn.Module
    compile: bool
    message: str  # one line for stderr: what was chosen and how to change it
    notes: list[str] = field(default_factory=list)  # the fallbacks taken (also in message)


def quantised_layers(model: nn.Module) -> list[nn.Module]:
    """The model's int8 / 4-bit / GGUF-block linear layers (`quantize.py`, `quant_kernels.py`)."""
    from danlu.generate.quant_kernels import BlockQuantLinear
    from danlu.generate.quantize import Int4Linear, Int8Linear

    return [m for m in model.modules() if isinstance(m, (BlockQuantLinear, Int8Linear, Int4Linear))]


def float_size(model: nn.Module) -> int:
    """Parameters, with a quantised linear layer counted as the in x out weights it stands for."""
    quantised = quantised_layers(model)
    return sum(p.numel() for p in model.parameters()) + sum(m.in_features * m.out_features for m in quantised)


def decode_twin(model: nn.Module) -> nn.Module:
    """A copy of `model`'s modules sharing its parameters and buffers: quantising the twin's linear layers
    leaves `model` (and training on it) untouched and costs only the new layers' memory."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)


def choose_decoding(
    model: nn.Module,
    path: str | Path,
    quantize: str = "auto",
    compile: bool | None = None,
    twin: bool = False,
    hint: str = CLI_HINT,
) -> DecodingChoice:
    """Quantise `model` (loaded from `path`) and decide on compiling, by the flags or, where they are "auto" /
    None, by the measurements in the module docstring. twin=True quantises a `decode_twin` of the model
    instead of the model itself (the library default, `library_decoding`); hint ends the message."""
    from danlu.generate.quant_kernels import BlockQuantLinear, fuse_gate_up
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
        flag = "--compile" if hint == CLI_HINT else "compile=True"
        notes.append(f"{flag}: no C++ compiler (g++/c++/clang++) for torch.compile's CPU kernels: eager step")
    if quantize == "auto":  # GGUF blocks only pay compiled (module docstring)
        quantize = (
            "gguf" if blocks and device.type == "cpu" and can_compile and compile is not False else "none"
        )
    weights = "the model's own quantised layers" if quantised_layers(model) else "float weights"
    kernel = False  # danlu's CPU kernel for GGUF blocks rounds activations to 8 bits (cpu_kernels.py)
    if quantize == "gguf":
        model, fallbacks = quantize_from_gguf(decode_twin(model) if twin else model, path)
        fuse_gate_up(model)  # gate and up rows as one product: +10% tokens/s on SmolLM2 (docs/BENCHMARKS.md)
        notes += fallbacks
        weights = f"the GGUF's {'/'.join(sorted(blocks))} blocks as stored"
        kernel = device.type == "cpu" and BlockQuantLinear.kernel_rows > 0  # the layers' own switch (opt-out)
    elif quantize in ("int8", "int4"):
        model = quantize_model(decode_twin(model) if twin else model, bits=8 if quantize == "int8" else 4)
        weights = f"{quantize} weights"
    if compile is None:
        compile = can_compile and (
            quantize in ("gguf", "int4") or float_size(model) >= AUTO_COMPILE_MIN_PARAMS
        )
    compile = bool(compile and can_compile)
    step = "compiled step" if compile else "eager step"
    message = f"decoding: {weights}, {step} on {device.type} ({hint})"
    if compile:
        message += (
            f"; the first reply waits for torch.compile (about a minute on a CPU, seconds once cached in "
            f"{inductor_cache_dir()})"
        )
    if kernel:  # so greedy tokens may differ from the float model's: say so
        message += (
            "; danlu's CPU kernel rounds activations to 8 bits per block of 32, as llama.cpp does "
            "(DANLU_CPU_KERNEL=0 for float activations)"
        )
    if notes:
        message += "; " + "; ".join(notes)
    return DecodingChoice(model, compile, message, notes)


# ---- the library default: `danlu.generate` / `danlu.stream` without compile= / quantize= ----------------------
LIBRARY_HINT = "quantize=, compile= to change; quiet=True silences this line"
_PREPARED = "_danlu_decoding"  # the attribute of a model holding its prepared decode model (_Prepared)


class _Prepared(dict):
    """A model's prepared decode models, {(quantize, compile): (decode model, compile)}, valid while its weights
    have `fingerprint` (so switching options back and forth rebuilds nothing)."""

    def __init__(self, fingerprint: tuple) -> None:
        super().__init__()
        self.fingerprint = fingerprint

    def __deepcopy__(self, memo: dict) -> None:  # a copy of the model prepares its own (its storage differs)
        return None


def library_decoding(
    model: nn.Module, quantize: str = "auto", compile: bool | None = None, quiet: bool = False
) -> tuple[nn.Module, bool]:
    """(the model to decode with, whether to compile its step) for `danlu.generate(model, ...)`: the CLI's
    choice (`choose_decoding`) made for the model as it is now. A model `danlu.load`ed from a GGUF file of
    Q8_0 / Q4_0 / Q4_1 blocks decodes from those blocks (on a `decode_twin`; the model keeps its float
    weights for training) while its weights are still the loaded ones, compiled; one of 50M+ parameters
    compiles; the rest stay as they are. The result is kept on the model per option set, so the next call
    pays nothing (and reuses the compiled step), and rebuilt when any weight changes. Anything beyond the eager
    float step is said once on stderr, unless quiet."""
    import torch

    from danlu.models.gguf import GGUFSource, weights_fingerprint

    if quantize not in QUANTIZE_CHOICES:
        raise DanluError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {quantize!r}")
    if compile is not None:
        compile = bool(compile)
    key, fingerprint = (quantize, compile), weights_fingerprint(model)
    held = getattr(model, _PREPARED, None)
    if not isinstance(held, _Prepared) or held.fingerprint != fingerprint:
        held = _Prepared(fingerprint)  # new weights: every earlier preparation is stale
        setattr(model, _PREPARED, held)
    if key in held:
        return held[key]
    path, notes = "", []
    if quantize == "auto" and quantised_layers(model):
        quantize = "none"  # already quantised (by quantize_model, or the CLI's choice): decode it as it is
    source = getattr(model, "gguf_source", None)
    if isinstance(source, GGUFSource) and source.block_types and quantize in ("auto", "gguf"):
        name = Path(source.path).name
        if source.fingerprint != fingerprint:
            notes.append(
                f"the weights are no longer those loaded from {name} (trained, cast, moved or copied since), "
                "so its blocks would decode another model: not used"
            )
        elif next(model.parameters()).dtype != torch.float32:
            notes.append(f"loaded from {name} in another dtype than float32: its blocks are not used")
        else:
            path = source.path
    if quantize == "gguf" and not path:
        raise DanluError(
            "quantize='gguf' reads the Q8_0 / Q4_0 / Q4_1 blocks of the GGUF file the model was loaded from, "
            f"and this model has none to read{': ' + notes[0] if notes else ''}; use quantize='int8' or 'int4'"
        )
    choice = choose_decoding(model, path, quantize, compile, twin=True, hint=LIBRARY_HINT)
    held[key] = (choice.model, choice.compile)
    chosen = key[0] == "auto" or compile is None  # something was decided here, not asked for
    if not quiet and (notes or choice.notes or (chosen and (choice.compile or choice.model is not model))):
        message = choice.message + "".join(f"; {n}" for n in notes)
        print(f"danlu.generate: {message}", file=sys.stderr)
    return choice.model, choice.compile
