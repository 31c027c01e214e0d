"""Training throughput: danlu's GPT vs Hugging Face `GPT2LMHeadModel`, same config, batch and device, one run.

Prints tokens/s for each and the ratios danlu / transformers (eager and torch.compile'd), and the same model
trained through danlu's one training loop (`danlu.train.loop.train`: schedule, clipping, logging every
`--log-interval` steps; its overhead over the bare step is the loop's cost). On CUDA it uses bf16 autocast and
fused AdamW and also prints MFU: model FLOPs per token 6N + 12·L·H·Q·T (Kaplan et al. 2020; PaLM appendix B: N
non-embedding parameters, L layers, H heads, Q head size, T context) against the peak.

The loop row runs against any danlu tree, so the loop of two trees compares back to back:

    PYTHONPATH=/path/to/other/danlu python benchmarks/train_throughput.py --loop-only

    python benchmarks/train_throughput.py                       # CPU, a small GPT-2
    python benchmarks/train_throughput.py --preset gpt2-124m --batch-size 16 --block-size 1024 --compile  # GPU
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch

from danlu.models.gpt import GPT, GPTConfig

H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM
# Wall time by default; `--clock process` counts this process's CPU time instead, which a machine loaded by
# other work disturbs far less (with --threads 1 it is the time the step itself computed).
CLOCK = time.perf_counter


def hf_model(cfg: GPTConfig):
    import transformers

    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    hf_cfg._attn_implementation = "sdpa"  # the fused attention kernel, as danlu uses
    return transformers.GPT2LMHeadModel(hf_cfg)


def measure(model, B: int, T: int, V: int, device: torch.device, steps: int, warmup: int) -> float:
    """Tokens per second of forward + backward + AdamW step."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    x = torch.randint(0, V, (B, T), device=device)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = CLOCK()
        with autocast:
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return B * T * steps / (CLOCK() - t0)


def measure_loop(model, B: int, T: int, V: int, device: torch.device, steps: int, warmup: int,
                 log_interval: int) -> float:  # fmt: skip
    """Tokens per second of danlu's training loop on the same batch (steps after `warmup`, the last one and its
    evaluation left out; timed from the loop's `on_step` callback)."""
    import tempfile

    from danlu.train.loop import TrainConfig, train

    x = torch.randint(0, V, (B, T))
    # from_dict drops fields an older loop lacks (log_interval), so the row runs on either tree
    cfg = TrainConfig.from_dict(dict(max_steps=warmup + steps + 1, batch_size=B, block_size=T, lr=1e-4,
                                     warmup_steps=1, eval_interval=0, eval_batches=1, log_interval=log_interval,
                                     device=str(device), show_progress=False))  # fmt: skip
    marks = {}

    def on_step(step: int, _record) -> None:
        if step in (warmup, warmup + steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            marks[step] = CLOCK()

    with tempfile.TemporaryDirectory() as out:
        train(model, lambda split, step, micro: {"input_ids": x, "labels": x}, cfg, out, on_step=on_step)
    return B * T * steps / (marks[warmup + steps] - marks[warmup])


def flops_per_token(cfg: GPTConfig, n_params: int) -> float:
    return 6 * n_params + 12 * cfg.n_layer * cfg.n_head * cfg.head_size * cfg.block_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gpt2-small")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="also measure both models under torch.compile")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--log-interval", type=int, default=10, help="the loop row's --log-interval")
    ap.add_argument(
        "--clock", choices=("wall", "process"), default="wall", help="what a second is (see CLOCK)"
    )
    ap.add_argument(
        "--loop-only", action="store_true", help="only the bare step and the loop (no transformers)"
    )
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    overrides = dict(block_size=args.block_size)
    if args.preset != "gpt2-124m":
        overrides["vocab_size"] = args.vocab_size
    cfg = GPTConfig.from_name(args.preset, **overrides)
    B, T, V = args.batch_size, args.block_size, cfg.vocab_size
    rows = []

    def run(name: str, build, compiled: bool) -> float:
        torch.manual_seed(0)
        model = build()
        n = sum(p.numel() for p in model.parameters())
        if compiled:
            model = torch.compile(model)
        tps = measure(model, B, T, V, device, args.steps, args.warmup + (3 if compiled else 0))
        rows.append((name, tps, n))
        print(f"  {name:<28} {tps:>12,.0f} tok/s", flush=True)
        return tps

    print(f"device={device} preset={args.preset} B={B} T={T} V={V} threads={torch.get_num_threads()}")
    d_eager = run("danlu (eager)", lambda: GPT(cfg), False)
    torch.manual_seed(0)
    model = GPT(cfg)
    loop_tps = measure_loop(model, B, T, V, device, args.steps, args.warmup, args.log_interval)
    rows.append(("danlu train() loop (eager)", loop_tps, sum(p.numel() for p in model.parameters())))
    print(f"  {'danlu train() loop (eager)':<28} {loop_tps:>12,.0f} tok/s", flush=True)
    print(f"  loop / bare step: {loop_tps / d_eager:.3f}", flush=True)
    if args.loop_only:
        return
    h_eager = run("transformers (eager)", lambda: hf_model(cfg), False)
    d_comp = h_comp = None
    if args.compile:
        d_comp = run("danlu (compiled)", lambda: GPT(cfg), True)
        h_comp = run("transformers (compiled)", lambda: hf_model(cfg), True)

    print("\n| model | tokens/s | ratio vs transformers eager | ratio vs transformers compiled |" +
          (" MFU |" if device.type == "cuda" else ""))  # fmt: skip
    print("|---|---:|---:|---:|" + ("---:|" if device.type == "cuda" else ""))
    n_emb = cfg.block_size * cfg.n_embd  # position table: excluded from N as in Kaplan et al.
    for name, tps, n in rows:
        r_comp = f"{tps / h_comp:.2f}" if h_comp else "–"
        line = f"| {name} | {tps:,.0f} | {tps / h_eager:.2f} | {r_comp} |"
        if device.type == "cuda":
            line += f" {tps * flops_per_token(cfg, n - n_emb) / H100_BF16_PEAK:.1%} |"
        print(line)
    best = d_comp or d_eager
    peer = h_comp or h_eager
    print(f"\ndanlu / transformers (best of each): {best / peer:.2f}x")


if __name__ == "__main__":
    main()
