"""danlu's own CPU kernel for GGUF blocks at batch 1: built on first use, registered as a torch custom op.

Notation: x (M, K) activations, W (N, K) a block-quantised weight (quant_kernels.py's layouts), blocks of 32.

`cpu_kernels.cpp` rounds each activation row to int8 per block of 32 (one scale, plus the block's float sum for
Q4_1's minimum) and multiplies it with the packed codes by integer dot products (AVX512-VNNI's dpbusd, else
AVX2's maddubs), as the GGUF formats are designed for; output rows are split over PyTorch's threads. It is
compiled once with `-O3 -march=native` through `torch.utils.cpp_extension` (announced on stderr while it builds;
kept in torch's extensions folder, `TORCH_EXTENSIONS_DIR`, under a name that carries the source's hash, so a
changed source rebuilds) and loaded as the op `torch.ops.danlu_kernels.block_gemv`, whose fake implementation
lets `torch.compile` keep it inside the compiled decode step's graph.

Where it cannot be used (no C++ compiler, a failed build, `DANLU_CPU_KERNEL=0`, another device or dtype) the
block layers keep their PyTorch path and one stderr line says so (the opt-out is silent). It is the default
for GGUF blocks on CPU since its outputs were checked against llama.cpp's and its perplexity measured
(docs/BENCHMARKS.md). Numbers: benchmarks/decode_speed.py, benchmarks/quant_perplexity.py.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from danlu.errors import DanluError

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
# rows of x up to which the kernel serves: decoding and short prompts; longer prefills dequantise and use
# MKL's GEMM. Measured on SmolLM2-135M (1 thread, CPU time of a forward): the kernel 2.4x cheaper at 16 rows,
# 2.3-2.5x at 32, 1.8-1.9x at 48, even at 128; the dequantising path pays once per call, the kernel per row.
MAX_ROWS = 64
GROUP = 32  # the kernel's block size (GGUF's)

_state: dict[str, object] = {}  # "ok": bool once tried; "why": the reason it is off


def _say(message: str) -> None:
    print(f"danlu: {message}", file=sys.stderr, flush=True)


def _build() -> None:
    """Compile (or load the cached build of) cpu_kernels.cpp and register the op's fake implementation."""
    from torch.utils import cpp_extension

    source = SOURCE.read_text(encoding="utf-8")
    name = "danlu_cpu_kernels_" + hashlib.sha256(source.encode()).hexdigest()[:12]
    folder = Path(cpp_extension._get_build_directory(name, verbose=False))
    if not (folder / f"{name}.so").is_file():
        _say(f"building the CPU block kernel (once; about a minute; cached in {folder})")
    cpp_extension.load(
        name=name,
        sources=[str(SOURCE)],
        extra_cflags=["-O3", "-march=native", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        is_python_module=False,
        verbose=False,
    )

    @torch.library.register_fake("danlu_kernels::block_gemv")
    def _(x, codes, scale, minimum):  # shape only: (M, N)
        return x.new_empty(x.shape[0], scale.shape[0])


def _load() -> bool:
    if "ok" in _state:
        return bool(_state["ok"])
    ok, why = False, ""
    if os.environ.get("DANLU_CPU_KERNEL", "1") == "0":
        why = "DANLU_CPU_KERNEL=0"
    else:
        try:
            _build()
            ok = True
        except Exception as e:  # no compiler, a failed build, a platform without the headers: fall back
            why = f"it did not build ({type(e).__name__}: {str(e).strip().splitlines()[-1][:200] if str(e) else ''})"
    _state.update(ok=ok, why=why)
    if not ok:
        _say(
            f"the CPU block kernel is off: {why}; GGUF block layers use the slower PyTorch path "
            "(install g++ for the fast one)"
        )
    return ok


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the kernel is built and loaded (tried once per process; a constant inside compiled graphs)."""
    return _load()


def applies(x: torch.Tensor, group_size: int, max_rows: int = MAX_ROWS) -> bool:
    """Whether `block_matmul` serves this (M, K) input: CPU float32, at most `max_rows` rows, blocks of 32,
    no gradient wanted."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.shape[0] <= max_rows
        and group_size == GROUP
        and not (x.requires_grad and torch.is_grad_enabled())  # the op has no backward
        and available()
    )


def block_matmul(
    x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor | None
) -> torch.Tensor:
    """x (M, K) float32 times the block weight's transpose -> (M, N), activations rounded to int8 per block."""
    if not available():
        raise DanluError(f"danlu's CPU block kernel is off ({_state['why']}); check `applies` before calling")
    return torch.ops.danlu_kernels.block_gemv(x, codes, scale, minimum)
