"""T5's span corruption vs BART's denoising as the pretraining of danlu's encoder-decoder, measured by the BLEU
of the same translation fine-tuning after it.

Notes 004 (Q5): T5 casts every task as text-to-text and pretrains with span corruption (Raffel et al. 2020:
15% of the tokens, spans of mean length 3, each replaced by a sentinel; the target is only the hidden spans),
BART with denoising (Lewis et al. 2020: the decoder rewrites the whole document from a corrupted copy; its
best noise is sentence permutation + text infilling, 30% of the tokens in Poisson(3) spans, one mask each).
T5's own comparison (its Table 4) found the objectives close, span corruption a little better and cheaper, as
its targets are short.

Here one encoder-decoder (`transformer-tiny`, one shared BPE with T5's sentinels, so every run has the same
parameters) is pretrained on the world's monolingual text with each objective for the same steps, from the
same initialisation, then fine-tuned the same way on the world's EN→ZH pairs; a run with no pretraining is
the baseline. BLEU (sacrebleu-compatible, zh tokenisation) of greedy and beam-4 translations of the held-out
pairs.

    python experiments/t5_vs_bart.py
    python experiments/t5_vs_bart.py --world runs/demo/world --pretrain-steps 400 --finetune-steps 300

Writes OUT/t5_vs_bart.json and OUT/t5_vs_bart.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

OBJECTIVES = ("none", "bart", "t5")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=Path, help="a world folder (default: `danlu world` into OUT/world)")
    ap.add_argument("--out", type=Path, default=Path("runs/t5_vs_bart"))
    ap.add_argument("--pretrain-steps", type=int, default=300, help="denoising steps of each objective")
    ap.add_argument("--finetune-steps", type=int, default=150, help="translation steps after it")
    ap.add_argument("--pairs", type=int, default=600, help="translation pairs fine-tuned on (of the world's)")
    ap.add_argument("--texts", type=int, default=5000, help="monolingual documents for pretraining")
    ap.add_argument("--test", type=int, default=200, help="held-out pairs scored")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--n-layer", type=int, default=3, help="encoder and decoder layers (transformer-tiny: 3)")
    ap.add_argument("--n-embd", type=int, default=128, help="width (transformer-tiny: 128)")
    ap.add_argument("--objectives", nargs="*", default=list(OBJECTIVES), choices=OBJECTIVES)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run of each objective per seed")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="PyTorch CPU threads (1: tiny models gain nothing from a second, and on a loaded machine a second costs 10x)",
    )
    args = ap.parse_args(argv)

    import torch

    from danlu.data.world import write_world
    from danlu.recipes.seq2seq import (
        T5_SENTINELS,
        bleu,
        denoise_pretrain,
        new_model,
        read_translation_data,
        train_tokenizer,
        train_translation,
    )
    from danlu.train.loop import TrainConfig

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    world = args.world
    if world is None:
        world = args.out / "world"
        if not (world / "seq2seq_train.jsonl").is_file():
            write_world(world, seed=0)
    train_records, test, texts = read_translation_data(world)
    test = test[: args.test]
    pairs = train_records[: args.pairs]
    # One tokenizer for every run (same vocabulary, same parameter count); the sentinels are unused by BART.
    tokenizer = train_tokenizer(
        [r["source"] for r in train_records] + [r["target"] for r in train_records],
        1536,
        n_sentinels=T5_SENTINELS,
    )

    def config(steps: int, seed: int) -> TrainConfig:
        return TrainConfig(
            max_steps=steps, batch_size=args.batch_size, block_size=args.block_size, lr=1e-3,
            warmup_steps=max(1, steps // 10), eval_interval=max(1, steps // 3), eval_batches=4, weight_decay=0.01,
            beta2=0.98, device="cpu", seed=seed, show_progress=False,
        )  # fmt: skip

    def one_run(objective: str, seed: int) -> dict:
        t0 = time.perf_counter()
        torch.manual_seed(seed)  # the same initial weights for every objective of a seed
        model = new_model(tokenizer, "transformer-tiny", block_size=args.block_size, n_layer=args.n_layer,
                          n_embd=args.n_embd)  # fmt: skip
        row: dict = {"seed": seed, "params": model.num_params()}
        out = args.out / f"{objective}_seed{seed}"
        if objective != "none":
            cfg = config(args.pretrain_steps, seed)
            d = denoise_pretrain(model, tokenizer, texts[: args.texts], out / "denoise", cfg, objective)
            row |= {"pretrain_first_val_loss": d["first_val_loss"], "pretrain_final_val_loss": d["final_val_loss"],
                    "pretrain_seconds": d["seconds"]}  # fmt: skip
        s = train_translation(model, tokenizer, pairs, out / "translate", config(args.finetune_steps, seed))
        row |= {
            "finetune_first_val_loss": s["first_val_loss"],
            "finetune_final_val_loss": s["final_val_loss"],
        }
        row["bleu_greedy"] = bleu(model, tokenizer, test, beam_size=1)
        row["bleu_beam4"] = bleu(model, tokenizer, test, beam_size=4)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{objective:>5} seed {seed}: translation val loss {row['finetune_final_val_loss']:.3f}, "
              f"BLEU greedy {row['bleu_greedy']:.1f}, beam-4 {row['bleu_beam4']:.1f} ({row['seconds']} s)")  # fmt: skip
        return row

    runs = {o: [one_run(o, seed) for seed in args.seeds] for o in args.objectives}
    results = {o: summarise(rows) for o, rows in runs.items()}

    n = len(args.seeds)
    print(f"\nmean (min – max) over {n} seed(s)")
    print("| pretraining | denoising val loss | translation val loss | BLEU greedy | BLEU beam 4 |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        pre = _cell(r, "pretrain_final_val_loss", 2) if "pretrain_final_val_loss" in r["mean"] else "—"
        print(f"| {name} | {pre} | {_cell(r, 'finetune_final_val_loss', 3)} | {_cell(r, 'bleu_greedy', 1)} | "
              f"{_cell(r, 'bleu_beam4', 1)} |")  # fmt: skip
    settings = {k: v for k, v in vars(args).items() if k not in ("world", "out")}
    report = {"settings": settings, "test_pairs": len(test), "train_pairs": len(pairs), "results": results}
    (args.out / "t5_vs_bart.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    plot(results, args.out / "t5_vs_bart.png")
    print(f"wrote {args.out / 't5_vs_bart.json'} and {args.out / 't5_vs_bart.png'}")
    return 0


def summarise(rows: list[dict]) -> dict:
    """Each metric's mean, min and max over the seeds' runs, and the runs themselves."""
    keys = [k for k in rows[0] if k not in ("seed", "params") and isinstance(rows[0][k], int | float)]
    return {
        "mean": {k: sum(r[k] for r in rows) / len(rows) for k in keys},
        "min": {k: min(r[k] for r in rows) for k in keys},
        "max": {k: max(r[k] for r in rows) for k in keys},
        "runs": rows,
    }


def _cell(r: dict, key: str, digits: int) -> str:
    mean, lo, hi = r["mean"][key], r["min"][key], r["max"][key]
    return (
        f"{mean:.{digits}f}"
        if len(r["runs"]) == 1
        else f"{mean:.{digits}f} ({lo:.{digits}f} – {hi:.{digits}f})"
    )


def plot(results: dict[str, dict], path: Path) -> None:
    from danlu.plots import new_figure, save_figure

    names = {"none": "no pretraining", "bart": "BART denoising", "t5": "T5 span corruption"}
    fig = new_figure(6, 3.8)
    ax = fig.add_subplot()
    keys = list(results)
    x = range(len(keys))
    for offset, metric, label in ((-0.2, "bleu_greedy", "greedy"), (0.2, "bleu_beam4", "beam 4")):
        mean = [results[k]["mean"][metric] for k in keys]
        spread = [[m - results[k]["min"][metric] for k, m in zip(keys, mean)],
                  [results[k]["max"][metric] - m for k, m in zip(keys, mean)]]  # fmt: skip
        bars = ax.bar([i + offset for i in x], mean, 0.4, yerr=spread, capsize=3, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    ax.set_xticks(list(x), [names[k] for k in keys])
    n = len(results[keys[0]]["runs"])
    ax.set_ylabel("BLEU on held-out EN→ZH pairs")
    if n > 1:
        ax.set_title(f"mean over {n} seeds (bars: min – max)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
