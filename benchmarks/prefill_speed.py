"""Prefill (prompt processing) rows of `benchmarks/decode_speed.py` (issue 22 item 2): prompt tokens per second at
16, 512 and 2,048 tokens, batch 1 — danlu eager (the engine's prefill), danlu with the prefill forward compiled,
transformers and llama.cpp (a child process, when `llama_cpp` is installed). Run through decode_speed.py
(`--prefill-only`); this file is also llama.cpp's prefill child process.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import time

import torch
from timing import clock, since

LLAMA_CPP = "llama.cpp on the GGUF as is"
PREFILL_CHILD = "--llama-cpp-prefill-child"  # internal: this script run as llama.cpp's prefill child process


def _prefill_forward(model, input_ids: torch.Tensor, cache) -> torch.Tensor:
    """The prompt's forward into an empty cache, un-embedding only the last position -> next logits (B, V).
    The cache is written by position (slots 0..T-1, as the compiled decode step does): the appending path
    counts `seq_len` in Python, which breaks dynamo's graph at every layer (one recompilation per layer)."""
    T = input_ids.shape[1]
    pos = torch.arange(T, device=input_ids.device)  # (T,)
    out = model(input_ids, kv_cache=cache, position_ids=pos[None], cache_position=pos, logits_to_keep=1)
    return out.logits[:, -1]


@torch.inference_mode()
def run_prefill_danlu(model, input_ids: torch.Tensor, fn=None) -> tuple[float, float]:
    """Seconds (wall, CPU) of the engine's prefill (`generate/steps.prefill`, eager: what every
    `danlu.generate` call runs), or of `fn` (a compiled `_prefill_forward`) on a fresh cache."""
    from danlu.generate import steps

    B, T = input_ids.shape
    if fn is None:
        state = steps.new_state(model, B, T + 1)
        t0 = clock(input_ids.device)
        steps.prefill(model, state, input_ids, torch.ones_like(input_ids))
    else:
        cache = model.new_kv_cache(B, T + 1)
        t0 = clock(input_ids.device)
        fn(model, input_ids, cache)
    return since(t0, input_ids.device)


@torch.inference_mode()
def run_prefill_hf(hf, input_ids: torch.Tensor) -> tuple[float, float]:
    """transformers' prefill as its `generate` runs it: the forward with a cache, last position's logits only."""
    t0 = clock(input_ids.device)
    hf(input_ids, attention_mask=torch.ones_like(input_ids), use_cache=True, logits_to_keep=1)
    return since(t0, input_ids.device)


def run_prefill_llama_cpp(path: str, input_ids: torch.Tensor, repeats: int) -> list[tuple[float, float]]:
    """llama.cpp evaluating the same prompt ids (batch 1) in a child process: (wall, CPU) per repeat."""
    ids = ",".join(str(i) for i in input_ids[0].tolist())
    cmd = [sys.executable, __file__, PREFILL_CHILD, path, ids, str(torch.get_num_threads()), str(repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the llama.cpp prefill failed (exit {done.returncode}): {done.stderr[-800:]}")
    return [tuple(x) for x in json.loads(done.stdout.strip().splitlines()[-1])]


def llama_cpp_prefill_child(path: str, ids: str, threads: str, repeats: str) -> None:
    import llama_cpp

    prompt = [int(i) for i in ids.split(",")]
    # n_batch = n_ubatch = the prompt: one evaluation call, as the PyTorch rows do (llama.cpp's default 512).
    n = max(512, len(prompt))
    llm = llama_cpp.Llama(model_path=path, n_ctx=len(prompt) + 8, n_batch=n, n_ubatch=n,
                          n_threads=int(threads), n_threads_batch=int(threads), verbose=False)  # fmt: skip
    out = []
    for i in range(int(repeats) + 1):  # the first is a warm-up
        llm.reset()
        t0 = time.perf_counter(), time.process_time()
        llm.eval(prompt)
        if i:
            out.append((time.perf_counter() - t0[0], time.process_time() - t0[1]))
    print(json.dumps(out))


def prefill_rows(model, hf, gguf: str | None, lengths: list[int], repeats: int, compile: bool) -> None:
    """Prompt tokens per second at each length, batch 1: danlu eager (the engine's prefill), danlu with the
    prefill forward compiled (dynamic shapes, one compilation for every length), transformers, llama.cpp;
    the ratios to transformers (and to llama.cpp where it runs). Medians of `repeats`, interleaved."""
    device = next(model.parameters()).device
    block = model.config.block_size
    if max(lengths) >= block:
        print(f"  prefill lengths capped to the model's context ({block} tokens)")
        lengths = sorted({min(T, block - 1) for T in lengths})
    compiled = torch.compile(_prefill_forward, fullgraph=True, dynamic=True) if compile else None
    with_llama_cpp = bool(gguf) and device.type == "cpu" and importlib.util.find_spec("llama_cpp") is not None
    print(f"\nprefill (prompt processing), batch 1, threads {torch.get_num_threads()}, median of {repeats}")
    print(f"  {'':28s} {'prompt':>6s} {'tokens/s':>9s} {'x HF':>6s} {'CPU-time tok/s':>14s} {'x HF':>6s}"
          + ("  x llama.cpp" if with_llama_cpp else ""))  # fmt: skip
    for T in lengths:
        g = torch.Generator().manual_seed(T)
        input_ids = torch.randint(0, model.config.vocab_size, (1, T), generator=g).to(device)
        rows = {"danlu (eager, the engine's)": lambda ids=input_ids: run_prefill_danlu(model, ids)}
        if compiled is not None:
            rows["danlu, forward compiled"] = lambda ids=input_ids: run_prefill_danlu(model, ids, compiled)
        if hf is not None:
            rows["transformers"] = lambda ids=input_ids: run_prefill_hf(hf, ids)
        for run in rows.values():  # warm-up (and the compilation) outside the timed runs
            run()
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in rows}
        for _ in range(repeats):
            for label, run in rows.items():
                times[label].append(run())
        if with_llama_cpp:
            times[LLAMA_CPP] = run_prefill_llama_cpp(gguf, input_ids, repeats)

        def rate(label: str, which: int, T=T, times=times) -> float:
            return T / statistics.median(t[which] for t in times[label])

        for label in times:
            cells = [f"{rate(label, i):9.0f}" if i == 0 else f"{rate(label, i):14.0f}" for i in (0, 1)]
            hf_ratio = [
                f"{rate(label, i) / rate('transformers', i):.2f}x" if hf is not None else "-" for i in (0, 1)
            ]
            cpp = f"  {rate(label, 0) / rate(LLAMA_CPP, 0):.2f}x" if with_llama_cpp else ""
            print(f"  {label:28s} {T:6d} {cells[0]} {hf_ratio[0]:>6s} {cells[1]} {hf_ratio[1]:>6s}{cpp}")
    if not with_llama_cpp:
        print("  llama.cpp prefill: not installed (needs `pip install llama-cpp-python`, see docs/BENCHMARKS.md)"
              if gguf else "  llama.cpp prefill: not run (needs a GGUF model)")  # fmt: skip


if __name__ == "__main__" and sys.argv[1:2] == [PREFILL_CHILD]:
    llama_cpp_prefill_child(*sys.argv[2:])
