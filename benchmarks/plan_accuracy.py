"""How close `danlu plan` comes to a real CPU training run (issue 18: peak memory within 20%, tokens/s within
30% after calibration).

For each config a child process (a fresh interpreter: no memory left over from another run) builds the model,
calibrates the CPU (danlu.train.plan.calibrate_cpu: one layer, same shapes), then trains 6 steps with
danlu's training loop. Its peak RSS delta is ru_maxrss after training minus the RSS just before the model was
built; tokens/s is that of steps 3-6 (the first pays for first-touch allocations). The parent prints a table
of plan vs measurement.

Each config runs twice: with glibc's default malloc, whose mmap threshold grows to 32 MiB after a large block
is freed, so later tensors of up to 32 MiB come from the heap and freed ones stay resident (RSS then exceeds
the live tensors by a varying amount), and with MALLOC_MMAP_THRESHOLD_=131072 (fixed: every tensor above
128 KiB is mapped and unmapped, so RSS follows the live tensors, which is what the plan counts).

    python benchmarks/plan_accuracy.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = [
    # name, preset, model overrides, batch, block, gradient checkpointing
    ("gpt2-small B8 T256", "gpt2-small", {"vocab_size": 4096}, 8, 256, False),
    ("llama-tiny V8192 B16 T256", "llama-tiny", {"vocab_size": 8192}, 16, 256, False),
    ("gpt2-small B16 T256 +ckpt", "gpt2-small", {"vocab_size": 4096}, 16, 256, True),
]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(spec: dict) -> dict:
    import resource
    import tempfile

    import torch

    from danlu.data.datasets import sample_blocks
    from danlu.models.gpt import GPT, GPTConfig
    from danlu.train.loop import TrainConfig, train
    from danlu.train.plan import calibrate_cpu, plan_training, tokens_per_second

    cfg = GPTConfig.from_name(spec["preset"], **spec["overrides"])
    B, T, recompute = spec["batch"], spec["block"], spec["recompute"]
    plan = plan_training(cfg, B, T, gradient_checkpointing=recompute)
    flops_s = calibrate_cpu(cfg, B, T)
    corpus = torch.randint(0, cfg.vocab_size, (200_000,), generator=torch.Generator().manual_seed(0))

    def batch_fn(split, step, micro):
        x = sample_blocks(corpus, B, T, 0 if split == "train" else 1, step, micro)
        return {"input_ids": x, "labels": x}

    import gc

    gc.collect()
    before = rss_bytes()
    model = GPT(cfg)
    tc = TrainConfig(max_steps=spec["steps"], batch_size=B, block_size=T, warmup_steps=1, eval_interval=0,
                     eval_batches=1, show_progress=False, device="cpu", gradient_checkpointing=recompute)  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        train(model, batch_fn, tc, out)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        recs = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    # from the end of step 2 (step 1 pays for first touches and is followed by an evaluation) to the last
    t2, t_end = steps[1]["elapsed_s"], steps[-1]["elapsed_s"]
    measured_tok_s = (len(steps) - 2) * B * T / max(t_end - t2, 1e-9)
    return {
        "planned_peak": plan.peak_train_bytes,
        "measured_peak": peak - before,
        "planned_tok_s": tokens_per_second(plan, flops_s),
        "measured_tok_s": measured_tok_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 steps each, not 6 (a rougher speed figure)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| config | planned peak MiB | measured (fixed mmap threshold) | ratio | measured (default malloc) | "
          "ratio | planned tok/s | measured tok/s | ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, preset, overrides, B, T, recompute in CONFIGS:
        spec = {"preset": preset, "overrides": overrides, "batch": B, "block": T, "recompute": recompute,
                "steps": 4 if args.quick else 6}  # fmt: skip
        runs = []
        for malloc_env in ({"MALLOC_MMAP_THRESHOLD_": "131072"}, {}):
            run = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env={**env, **malloc_env},
                                 capture_output=True, text=True)  # fmt: skip
            if run.returncode:
                raise SystemExit(f"{name}: the child failed:\n{run.stderr[-2000:]}")
            runs.append(json.loads(run.stdout.strip().splitlines()[-1]))
        fixed, default = runs
        mib, plan = 2**20, fixed["planned_peak"]
        print(
            f"| {name} | {plan / mib:.0f} | {fixed['measured_peak'] / mib:.0f} | "
            f"{plan / fixed['measured_peak']:.2f} | {default['measured_peak'] / mib:.0f} | "
            f"{plan / default['measured_peak']:.2f} | {fixed['planned_tok_s']:.0f} | "
            f"{fixed['measured_tok_s']:.0f} | {fixed['planned_tok_s'] / fixed['measured_tok_s']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
