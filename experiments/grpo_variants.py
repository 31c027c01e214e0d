"""GRPO and its successors on danlu's world: does each raise held-out arithmetic accuracy over SFT?

GRPO (Shao et al. 2024) normalises each group's rewards by its std and averages every answer's tokens first;
Dr. GRPO (Liu et al. 2025) drops both (no std, a constant normaliser), arguing they bias the update toward
nearly solved groups and long wrong answers; DAPO (Yu et al. 2025) averages over all tokens of the batch,
clips higher (ε_high = 0.28) and drops groups with no signal; GSPO (Zheng et al. 2025) uses one importance
ratio per answer; CISPO (MiniMax-M1) clips a detached IS weight; RLOO (Ahmadian et al. 2024) is REINFORCE with
a leave-one-out baseline. The world's reward is verifiable — the checker knows the exact result — so each
variant is judged by greedy accuracy on the 100 held-out `sft_test` sums, against the SFT model it starts from.

Every variant starts from the same SFT checkpoint with the same rounds, prompts, group size and learning rate
(the demo's GRPO recipe, `danlu.recipes.align_stages.grpo_config`, with fewer rounds by default), and samples
the same training problems (the world's arithmetic pool less the held-out sums, as the demo does). The
measurement in experiments/README.md: the demo's base, each variant in its own process, then one report:

    danlu demo --stages sft --out runs/demo                  # runs/demo/sft/checkpoint, runs/demo/world
    for v in grpo dapo; do
        python experiments/grpo_variants.py --model runs/demo/sft/checkpoint --world runs/demo/world \
            --variants $v --out runs/grpo_variants/s0 &
    done; wait                                                # then dr_grpo, gspo cispo rloo the same way
    python experiments/grpo_variants.py --collect --variants grpo dapo dr_grpo --out runs/grpo_variants/s0
    python experiments/grpo_variants.py --merge runs/grpo_variants/s0 [runs/grpo_variants/s1 ...] \
        --out runs/grpo_variants                              # seeds (--seed N --out .../sN): mean and spread

Small settings (no pretrained model: a fresh 4-layer GPT fine-tuned on the world's 400 arithmetic records):
`--scratch-sft 800 [--with-sums] --variants` writes OUT/sft/checkpoint, then the loop above from it.

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
    # 120 rounds at lr 4e-5: what fit the measurement on 2 shared cores (~10 s a round); the demo runs 200
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--prompts-per-step", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=4e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--sampled",
        type=int,
        default=0,
        metavar="K",
        help="also score K answers sampled at temperature 1 per held-out sum, before and after (mean accuracy "
        "and pass@K, in OUT/VARIANT/sampled.json): does RL move the sampled answers but not the greedy one?",
    )
    # 1: on a loaded machine two threads per process spin at every barrier (0.5 s vs 12 s an SFT step here)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--collect",
        action="store_true",
        help="no training: report the runs already in OUT/VARIANT (run in parallel)",
    )
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="no training: one summary over seeds, each DIR an --out of one seed's runs (DIR/VARIANT), into OUT",
    )
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)

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
            if args.sampled:
                sampled = {name: sampled_accuracy(m.eval(), tokenizer, test, args.sampled, cfg.max_new_tokens)
                           for name, m in (("sft", ref), ("after", policy))}  # fmt: skip
                (run_dir / "sampled.json").write_text(json.dumps(sampled, indent=1), encoding="utf-8")
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
    """The GRPOConfig of one variant's run: the demo's recipe (`align_stages.grpo_config`) with this run's
    rounds, learning rate and seed; the same for all but the loss, DAPO's β and RLOO's one update per round."""
    from danlu.recipes.align_stages import grpo_config

    return grpo_config(args.steps, args.seed, "cpu", loss=variant, lr=args.lr)


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


def sampled_accuracy(model: Any, tokenizer: Any, records: list[dict], k: int, max_new_tokens: int) -> dict:
    """Mean reward of k answers sampled at temperature 1 per record, and pass@k (any of the k right)."""
    import torch

    from danlu.align.rollout import sample
    from danlu.data.world import reward
    from danlu.tune.sft import prompt_text

    rows = [r for r in records for _ in range(k)]  # each record k times, consecutively
    rollout = sample(model, tokenizer, [prompt_text(r, tokenizer) for r in rows], max_new_tokens, 1.0, seed=3)
    scores = torch.tensor([reward(r, y) for r, y in zip(rows, rollout.texts)]).view(len(records), k)
    return {
        "k": k,
        "accuracy": scores.mean().item(),
        "pass_at_k": (scores.max(1).values > 0).float().mean().item(),
    }


def merge(dirs: list[Path], out: Path) -> int:
    """One summary of seeds run as separate processes: per variant, each seed's gain and their mean and spread.

    A seed's runs are DIR/VARIANT (an --out of one seed); the figure shows the mean over seeds with each seed as
    a dot, so a reader sees the spread beside the binomial standard error of 100 items (≈ 0.045 near 0.5)."""
    from statistics import mean, stdev

    from danlu.train.metrics import read_metrics

    per_variant: dict[str, list[dict]] = {}
    for d in dirs:
        for variant in VARIANTS:
            if (d / variant / "metrics.jsonl").is_file():
                r = _result(d / variant, read_metrics(d / variant / "metrics.jsonl"))
                per_variant.setdefault(variant, []).append(r | {"dir": str(d)})
    if not per_variant:
        raise SystemExit(f"error: no DIR/VARIANT/metrics.jsonl under {', '.join(map(str, dirs))}")
    results = {}
    for variant, runs in per_variant.items():
        gains = [r["gain"] for r in runs]
        results[variant] = {
            "seeds": [r["config"]["seed"] if r["config"] else None for r in runs],
            "accuracy_sft": [r["accuracy_sft"] for r in runs],
            "accuracy": [r["accuracy"] for r in runs],
            "gains": gains,
            "gain_mean": mean(gains),
            "gain_std": stdev(gains) if len(gains) > 1 else 0.0,
            "gain_min": min(gains),
            "gain_max": max(gains),
            "final_kl": [r["kl_curve"][-1][1] if r["kl_curve"] else None for r in runs],
            "seconds": [r["seconds"] for r in runs],
            "runs": runs,
        }
        print(f"{variant:>8}: gain {mean(gains):+.3f} ± {results[variant]['gain_std']:.3f} over {len(gains)} "
              f"seeds ({', '.join(f'{g:+.2f}' for g in gains)})")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    summary = {"merged": [str(d) for d in dirs], "results": results}
    (out / "grpo_variants.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    _plot({v: r["runs"] for v, r in results.items()}, out / "grpo_variants.png")
    print(f"wrote {out / 'grpo_variants.json'} and {out / 'grpo_variants.png'}")
    return 0


def _result(run_dir: Path, logged: list[dict]) -> dict:
    """Accuracy before (step 0: the SFT model) and after (the last evaluation), and the curves, of one run."""
    evals = [(r["step"], r["eval_accuracy"]) for r in logged if "eval_accuracy" in r]
    seconds, cfg, sampled = run_dir / "seconds.txt", run_dir / "config.json", run_dir / "sampled.json"
    return {
        "config": json.loads(cfg.read_text(encoding="utf-8")) if cfg.is_file() else None,
        "accuracy_sft": evals[0][1],
        "accuracy": evals[-1][1],
        "gain": evals[-1][1] - evals[0][1],
        "steps": evals[-1][0],
        "seconds": float(seconds.read_text()) if seconds.is_file() else float("nan"),
        "sampled": json.loads(sampled.read_text(encoding="utf-8")) if sampled.is_file() else None,
        "eval_curve": evals,
        "reward_curve": [(r["step"], r["reward"]) for r in logged if "reward" in r],
        "kl_curve": [(r["step"], r["kl"]) for r in logged if "kl" in r],
    }


def _plot(results: dict[str, Any], path: Path) -> None:
    """Bars: held-out accuracy of SFT and of each variant (the mean over seeds, each seed a dot); right: the
    held-out accuracy along the run (mean over seeds) and the training reward (a moving average of 10 rounds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = {v: r if isinstance(r, list) else [r] for v, r in results.items()}  # variant -> one run per seed
    fig, (bars_ax, curve_ax) = plt.subplots(1, 2, figsize=(11, 4))
    first = next(iter(runs.values()))
    per_bar = [[r["accuracy_sft"] for r in first], *([r["accuracy"] for r in rs] for rs in runs.values())]
    names = ["SFT", *runs]
    means = [float(np.mean(v)) for v in per_bar]
    bars = bars_ax.bar(names, means, color=[f"C{i}" for i in range(len(names))], alpha=0.75)
    for i, values in enumerate(per_bar):
        bars_ax.plot([i] * len(values), values, "k.", markersize=6)
    bars_ax.bar_label(bars, [f"{m:.2f}" for m in means])
    bars_ax.axhline(means[0] + 0.1, color="k", linestyle=":", linewidth=1, label="SFT + 0.1 (issue 21's bar)")
    bars_ax.legend(fontsize=7, loc="upper left")
    top = min(1.05, max(max(v) for v in per_bar) + 0.25)
    bars_ax.set_ylim(0, top)
    n_seeds = len(first)
    bars_ax.set_ylabel("held-out arithmetic accuracy (greedy)")
    bars_ax.set_title(f"100 held-out sums; bar = mean of {n_seeds} seed(s), dot = one seed", fontsize=9)
    bars_ax.tick_params(axis="x", labelsize=8)
    for i, (name, rs) in enumerate(runs.items(), start=1):
        if rs[0]["reward_curve"]:
            steps = np.array([s for s, _ in rs[0]["reward_curve"]])
            n = min(len(r["reward_curve"]) for r in rs)
            reward = np.mean([[v for _, v in r["reward_curve"][:n]] for r in rs], axis=0)
            k = min(10, n)
            smooth = np.convolve(reward, np.ones(k) / k, mode="valid")  # (n - k + 1,)
            curve_ax.plot(steps[k - 1 : n], smooth, color=f"C{i}", alpha=0.6, label=f"{name}: train reward")
        if rs[0]["eval_curve"]:
            n = min(len(r["eval_curve"]) for r in rs)
            es = [s for s, _ in rs[0]["eval_curve"][:n]]
            acc = np.mean([[v for _, v in r["eval_curve"][:n]] for r in rs], axis=0)
            curve_ax.plot(es, acc, "o--", color=f"C{i}", label=f"{name}: held-out accuracy")
    curve_ax.set_xlabel("round")
    curve_ax.set_ylim(0, top)
    curve_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
