"""GRPO and its successors on danlu's world: does each raise held-out arithmetic accuracy over SFT?

GRPO (Shao et al. 2024) normalises each group's rewards by its std and averages every answer's tokens first;
Dr. GRPO (Liu et al. 2025) drops both (no std, a constant normaliser), arguing they bias the update toward
nearly solved groups and long wrong answers; DAPO (Yu et al. 2025) averages over all tokens of the batch,
clips higher (ε_high = 0.28) and drops groups with no signal; GSPO (Zheng et al. 2025) uses one importance
ratio per answer; CISPO (MiniMax-M1) clips a detached IS weight; RLOO (Ahmadian et al. 2024) is REINFORCE with
a leave-one-out baseline. The world's reward is verifiable — the checker knows the exact result — so each
variant is judged by greedy accuracy on the 100 held-out `sft_test` sums, against the SFT model it starts from.

Every variant starts from the same SFT checkpoint with the same steps, prompts, group size and learning rate
(the `danlu demo --stages grpo` setting, fewer steps), and samples the same training problems (the world's
arithmetic pool less the held-out sums, as the demo does).

    danlu demo --stages sft                                  # runs/demo/sft/checkpoint, runs/demo/world
    python experiments/grpo_variants.py --model runs/demo/sft/checkpoint --world runs/demo/world

Small settings (no pretrained model: a fresh 4-layer GPT fine-tuned on the world's 400 arithmetic records),
each variant in its own process, then one report:

    python experiments/grpo_variants.py --scratch-sft 800 --variants          # OUT/sft/checkpoint
    for v in grpo dapo dr_grpo; do
        python experiments/grpo_variants.py --model runs/grpo_variants/sft/checkpoint --variants $v &
    done; wait
    python experiments/grpo_variants.py --collect

Writes OUT/grpo_variants.json and OUT/grpo_variants.png (OUT/VARIANT/ holds each run's metrics and curves).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

VARIANTS = ("grpo", "dapo", "dr_grpo", "gspo", "cispo", "rloo")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("runs/demo/sft/checkpoint"), help="the SFT checkpoint")
    ap.add_argument("--world", type=Path, default=Path("runs/demo/world"), help="the world folder (sft_test)")
    ap.add_argument("--out", type=Path, default=Path("runs/grpo_variants"))
    ap.add_argument(
        "--scratch-sft",
        type=int,
        default=0,
        metavar="STEPS",
        help="small settings: no pretrained model; SFT a fresh 4-layer GPT for STEPS steps on the world's "
        "arithmetic (sft_train) with the world's tokenizer (--tokenizer), save it to OUT/sft/checkpoint and "
        "start every variant from it",
    )
    ap.add_argument("--tokenizer", type=Path, default=Path("runs/demo/tokenizer"), help="for --scratch-sft")
    ap.add_argument(
        "--with-sums",
        action="store_true",
        help="with --scratch-sft: also train on the sums the world's pretraining text states ('9 * 4 = 36' as "
        "prompt '9 * 4 =', reply '36'), a stand-in for pretraining: the held-out questions' sums are among them",
    )
    ap.add_argument("--variants", nargs="*", default=["grpo", "dapo", "dr_grpo"], choices=VARIANTS)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--prompts-per-step", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=4e-5)
    ap.add_argument("--seed", type=int, default=0)
    # 1: on a loaded machine two threads per process spin at every barrier (0.5 s vs 12 s an SFT step here)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--collect",
        action="store_true",
        help="no training: report the runs already in OUT/VARIANT (run in parallel)",
    )
    args = ap.parse_args(argv)

    import torch

    import danlu
    from danlu.align.grpo import grpo
    from danlu.data.formats import read_jsonl
    from danlu.recipes.align_stages import arithmetic_pool
    from danlu.train.metrics import read_metrics

    torch.set_num_threads(args.threads)
    test = [r for r in read_jsonl(args.world / "sft_test.jsonl") if r["kind"] == "arith"]
    train = arithmetic_pool(test)
    if args.scratch_sft:
        args.model = scratch_sft(args, test)
    results: dict[str, dict] = {}
    for variant in args.variants:
        run_dir = args.out / variant
        if not args.collect:
            policy, tokenizer = danlu.load(args.model)
            ref, _ = danlu.load(args.model)
            cfg = config(args, variant)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=1), encoding="utf-8")
            start = time.time()
            grpo(policy.train(), tokenizer, train, run_dir, cfg, eval_records=test, ref=ref.eval(),
                 show_progress=False)  # fmt: skip
            (run_dir / "seconds.txt").write_text(f"{time.time() - start:.1f}\n")
        results[variant] = _result(run_dir, read_metrics(run_dir / "metrics.jsonl"))
        r = results[variant]
        print(f"{variant:>8}: held-out accuracy {r['accuracy_sft']:.3f} -> {r['accuracy']:.3f} "
              f"({r['gain']:+.3f}) in {r['seconds']:.0f} s", flush=True)  # fmt: skip

    if not results:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    # the runs' own settings are in each result's "config"; these are this invocation's
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    summary = {"settings": settings, "heldout_items": len(test), "train_pool": len(train), "results": results}
    (args.out / "grpo_variants.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    _plot(results, args.out / "grpo_variants.png")
    print(f"wrote {args.out / 'grpo_variants.json'} and {args.out / 'grpo_variants.png'}")
    return 0


def config(args: argparse.Namespace, variant: str) -> Any:
    """The GRPOConfig of one variant's run: the same for all but the loss, DAPO's β and RLOO's epochs."""
    from danlu.align.configs import GRPOConfig

    # DAPO's paper trains without the KL term; the others keep DeepSeekMath's β = 0.04 (RLOO: in the reward)
    return GRPOConfig(max_steps=args.steps, prompts_per_step=args.prompts_per_step, group_size=args.group_size,
                      inner_epochs=1 if variant == "rloo" else 2, lr=args.lr, decay="constant",
                      beta=0.0 if variant == "dapo" else 0.04, max_new_tokens=12, loss=variant,
                      eval_interval=max(1, args.steps // 4), seed=args.seed, device="cpu")  # fmt: skip


def scratch_sft(args: argparse.Namespace, test: list[dict]) -> Path:
    """SFT a fresh small GPT on the world's arithmetic records; returns its checkpoint folder."""
    import torch

    from danlu.align.grpo import verifiable_accuracy
    from danlu.data.formats import read_jsonl
    from danlu.models.checkpoints import save_model
    from danlu.models.gpt import GPT, GPTConfig
    from danlu.tokenizers.bpe import BPETokenizer
    from danlu.train.config import TrainConfig
    from danlu.tune.sft import sft

    tokenizer = BPETokenizer.load(args.tokenizer)
    records = [r for r in read_jsonl(args.world / "sft_train.jsonl") if r["kind"] == "arith"]
    if args.with_sums:
        import re

        stated = set()
        for r in read_jsonl(args.world / "pretrain_train.jsonl"):
            stated |= set(re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", r["text"]))
        records += [
            {"instruction": f"{a} {op} {b} =", "input": "", "output": c} for a, op, b, c in sorted(stated)
        ]
    torch.manual_seed(args.seed)
    shape = dict(vocab_size=tokenizer.vocab_size, n_layer=4, n_embd=128, n_head=4, n_kv_head=2, block_size=64)
    model = GPT(GPTConfig.from_name("llama-tiny", **shape))
    cfg = TrainConfig(max_steps=args.scratch_sft, batch_size=32, block_size=64, lr=2e-3, warmup_steps=20,
                      eval_interval=args.scratch_sft, seed=args.seed, device="cpu", show_progress=False,
                      weight_decay=0.0)  # fmt: skip
    start = time.time()
    tuned = sft(model, tokenizer, records, args.out / "sft", cfg, val_records=records[:16]).model.eval()
    accuracy = verifiable_accuracy(tuned, tokenizer, test, 12)
    print(f"     sft: {len(records)} arithmetic records, {args.scratch_sft} steps in {time.time() - start:.0f} s; "
          f"held-out accuracy {accuracy:.3f}", flush=True)  # fmt: skip
    return save_model(tuned, args.out / "sft" / "checkpoint", tokenizer=tokenizer)


def _result(run_dir: Path, logged: list[dict]) -> dict:
    """Accuracy before (step 0: the SFT model) and after (the last evaluation), and the curves, of one run."""
    evals = [(r["step"], r["eval_accuracy"]) for r in logged if "eval_accuracy" in r]
    seconds, cfg = run_dir / "seconds.txt", run_dir / "config.json"
    return {
        "config": json.loads(cfg.read_text(encoding="utf-8")) if cfg.is_file() else None,
        "accuracy_sft": evals[0][1],
        "accuracy": evals[-1][1],
        "gain": evals[-1][1] - evals[0][1],
        "steps": evals[-1][0],
        "seconds": float(seconds.read_text()) if seconds.is_file() else float("nan"),
        "eval_curve": evals,
        "reward_curve": [(r["step"], r["reward"]) for r in logged if "reward" in r],
        "kl_curve": [(r["step"], r["kl"]) for r in logged if "kl" in r],
    }


def _plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars_ax, curve_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = ["SFT", *results]
    sft = next(iter(results.values()))["accuracy_sft"]
    values = [sft, *(r["accuracy"] for r in results.values())]
    bars = bars_ax.bar(names, values, color=[f"C{i}" for i in range(len(names))])
    bars_ax.bar_label(bars, [f"{v:.2f}" for v in values])
    bars_ax.set_ylim(0, 1.05)
    bars_ax.set_ylabel("held-out arithmetic accuracy (greedy)")
    for i, (name, r) in enumerate(results.items(), start=1):
        steps, reward = zip(*r["reward_curve"]) if r["reward_curve"] else ((), ())
        curve_ax.plot(steps, reward, color=f"C{i}", alpha=0.8, label=f"{name}: train reward")
        if r["eval_curve"]:
            es, acc = zip(*r["eval_curve"])
            curve_ax.plot(es, acc, "o--", color=f"C{i}", label=f"{name}: held-out accuracy")
    curve_ax.set_xlabel("round")
    curve_ax.set_ylim(0, 1.05)
    curve_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
