"""In-context learning on danlu's world: zero-shot vs k-shot accuracy across model sizes.

Notes 004 (ICL) and 003 (上下文学习): a large enough language model can do a task it was never trained on as an
instruction when the prompt shows it k worked examples (Brown et al. 2020, "Language Models are Few-Shot
Learners"); the ability is said to grow with size, even to appear suddenly ("emergence", Wei et al. 2022).

The world makes the test clean. Its pretraining text states facts ("Noten is a baker.") and sums, but never as
questions and answers; the questions of `sft_test.jsonl` ("What job does Noten do?") are in a format the
pretrained models have never seen. Each model answers the same held-in questions (facts its pretraining stated)
with k = 0, 1, 2, 4, 8 examples drawn from `sft_train.jsonl` of the same kind and language, prompted with
`danlu.app.prompts.FewShotTemplate`; greedy decoding; the first line of the reply is scored by exact match
against the gold output or its bare answer (`danlu.eval.text.exact_match`, as `danlu eval` does).

Every cell (model × kind × k) is 200 questions, its accuracy given with a 95% percentile-bootstrap interval
(`danlu.eval.bootstrap`).

    python experiments/icl.py --runs runs/scaling                  # the 320-step models of scaling.py
    python experiments/icl.py --model runs/demo/pretrain/checkpoint --world runs/scaling/world

Writes OUT/icl.json and OUT/icl.png; `run(out_dir)` returns the numbers, the figure and a markdown section.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

SHOTS = (0, 1, 2, 4, 8)
KINDS = ("fact", "arith")
ITEMS = 200  # questions per cell (model × kind × k): a 95% interval of about ±0.07 at an accuracy of 0.5


def _records(world: Path, kind: str, lang: str, items: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(shot pool, questions): the world's test questions of `kind`, topped up to `items` from its SFT training
    questions (a pretrained-only model has seen neither as a question); shots come only from the rest."""
    from danlu.data.formats import read_jsonl

    train = [
        r for r in read_jsonl(world / "sft_train.jsonl", "sft") if r["kind"] == kind and r["lang"] == lang
    ]
    test = [r for r in read_jsonl(world / "sft_test.jsonl", "sft") if r["kind"] == kind and r["lang"] == lang]
    random.Random(seed).shuffle(train)
    need = max(0, items - len(test))
    test, pool = (test + train[:need])[:items], train[need:]
    if len(pool) < max(SHOTS):
        raise SystemExit(f"error: only {len(pool)} {kind} records left for shots; lower --items")
    return pool, test


def _template(shots: list[dict]):
    from danlu.app.prompts import FewShotTemplate, PromptTemplate

    return FewShotTemplate(
        examples=shots,
        example=PromptTemplate("Q: {instruction}\nA: {output}"),
        suffix=PromptTemplate("Q: {instruction}\nA:"),
        separator="\n\n",
    )


def score(
    model, tokenizer, pool: list[dict], test: list[dict], k: int, seed: int, max_new_tokens: int = 16
) -> list[float]:
    """Per-question exact match (0/1) of `model` on `test` with k examples from `pool` (a fresh seeded draw per
    question), scored on the reply's first line against the gold output or its bare answer."""
    import danlu
    from danlu.eval.text import exact_match

    rng = random.Random(seed * 1000 + k)
    prompts = [_template(rng.sample(pool, k)).format(instruction=r["instruction"]) for r in test]
    replies = danlu.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    answers = [reply.strip().split("\n")[0].strip() for reply in replies]
    return [exact_match([a], [[r["output"], str(r["answer"])]]) for a, r in zip(answers, test, strict=True)]


def scaling_models(runs: Path, steps: int | None = None, required: bool = True) -> list[tuple[str, Path]]:
    """The checkpoints of experiments/scaling.py's runs (RUNS/runs/L*_C*_S<steps>) of one budget (default: its
    longest), smallest first. None found is an error when `required`, else []. The one place that knows
    scaling.py's folders: `danlu demo --stages lab` hands `run` the folder, not a list it made itself."""
    done = [d for d in (Path(runs) / "runs").glob("*_S*") if (d / "checkpoint" / "config.json").is_file()]
    if steps is None and done:
        steps = max(int(d.name.rsplit("_S", 1)[1]) for d in done)
    found = [
        d for d in (Path(runs) / "runs").glob(f"*_S{steps}") if (d / "checkpoint" / "config.json").is_file()
    ]
    if not found:
        if not required:
            return []
        raise SystemExit(f"error: no run ending in _S{steps} in {Path(runs) / 'runs'}; run scaling.py first")
    return [(d.name, d / "checkpoint") for d in sorted(found, key=lambda d: _hidden(d / "checkpoint"))]


def _short(accuracy: float | None) -> str:
    return "—" if accuracy is None else f"{accuracy:.2f}"


def _hidden(ck: Path) -> int:
    cfg = json.loads((ck / "config.json").read_text())
    return cfg.get("hidden_size") or cfg.get("n_embd") or 0


def run(out_dir: str | Path, quick: bool = False, models: list[tuple[str, Path]] | None = None,
        world: Path | None = None, runs: Path | None = None, steps: int | None = None, items: int = ITEMS,
        kinds: tuple[str, ...] = KINDS, seed: int = 0, max_new_tokens: int = 16) -> dict[str, Any]:  # fmt: skip
    """Accuracy with 95% bootstrap intervals for every model × kind × k; numbers, figure and markdown.

    The models: scaling.py's runs in `runs` (see `scaling_models`; those of out_dir when neither `runs` nor
    `models` is given), then `models`, (name, checkpoint) pairs. With `models`, `runs` may hold none yet."""
    import danlu
    from danlu.errors import DanluError
    from danlu.eval.bootstrap import bootstrap_ci

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        items, max_new_tokens = min(items, 8), min(max_new_tokens, 4)
    if runs is not None or not models:
        models = scaling_models(runs or out, steps, required=not models) + list(models or [])
    world = Path(world or (Path(runs or out) / "world"))
    results = []
    for name, path in models:
        model, tokenizer = danlu.load(path)
        row: dict[str, Any] = {"model": name, "params": sum(q.numel() for q in model.parameters())}
        for kind in kinds:
            pool, test = _records(world, kind, "en", items, seed)
            row[kind] = {}
            for k in SHOTS:
                try:
                    scores = score(model, tokenizer, pool, test, k, seed, max_new_tokens)
                except DanluError as e:  # k examples do not fit the model's context: say so, not a number
                    if "context" not in str(e):
                        raise
                    row[kind][str(k)] = {"accuracy": None, "ci95": None, "items": 0, "skipped": str(e)}
                    continue
                mean, low, high = bootstrap_ci(scores, seed=seed)
                row[kind][str(k)] = {"accuracy": mean, "ci95": [low, high], "items": len(scores)}
        results.append(row)
        print(f"{name:<16} {row['params']:>10,} params  " + "  ".join(
            f"{kind} " + " ".join(f"{k}:{_short(row[kind][str(k)]['accuracy'])}" for k in SHOTS) for kind in kinds
        ), flush=True)  # fmt: skip
    figure = out / "icl.png"
    _plot(results, kinds, figure)
    report = {"results": results, "items_per_cell": items, "shots": list(SHOTS), "figure": str(figure)}
    report["markdown"] = markdown(report, kinds)
    (out / "icl.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print("\n" + report["markdown"])
    print(f"wrote {out / 'icl.json'} and {figure}")
    return report


def markdown(report: dict, kinds: tuple[str, ...] = KINDS) -> str:
    from danlu.eval.bootstrap import format_ci

    head = " | ".join(f"{kind} k={k}" for kind in kinds for k in SHOTS)
    lines = [
        "## In-context learning: zero-shot vs k-shot\n",
        f"Exact match with 95% bootstrap intervals, {report['items_per_cell']} questions per cell.\n",
        f"| model | params | {head} |",
        "|---|---:|" + "---:|" * (len(kinds) * len(SHOTS)),
    ]
    for row in report["results"]:
        cells = " | ".join(
            format_ci(row[kind][str(k)]["accuracy"], *row[kind][str(k)]["ci95"])
            if row[kind][str(k)]["ci95"]
            else "— (context)"
            for kind in kinds
            for k in SHOTS
        )
        lines.append(f"| {row['model']} | {row['params']:,} | {cells} |")
    lines.append(f"\n![ICL]({report['figure']})\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=Path("runs/scaling"), help="the OUT folder of scaling.py")
    p.add_argument(
        "--steps", type=int, default=None, help="which budget of scaling.py's runs (default: longest)"
    )
    p.add_argument("--model", type=Path, nargs="*", help="checkpoints to use instead of --runs")
    p.add_argument("--world", type=Path, default=None, help="the world folder (default: RUNS/world)")
    p.add_argument("--items", type=int, default=ITEMS, help="questions per kind (and per k)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--out", type=Path, default=None, help="default: the --runs folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    models = (
        [(q.parent.name if q.name == "checkpoint" else q.name, q) for q in args.model] if args.model else None
    )
    run(args.out or args.runs, models=models, world=args.world or args.runs / "world",
        runs=None if models else args.runs, steps=args.steps,
        items=args.items, kinds=tuple(args.kinds), seed=args.seed, max_new_tokens=args.max_new_tokens)  # fmt: skip
    return 0


def _plot(results: list[dict], kinds: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), sharey=True, squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for i, row in enumerate(results):
            shots = [k for k in SHOTS if row[kind][str(k)]["ci95"]]  # the k whose prompts fit the context
            cells = [row[kind][str(k)] for k in shots]
            acc = [c["accuracy"] for c in cells]
            err = [
                [a - c["ci95"][0] for a, c in zip(acc, cells)],
                [c["ci95"][1] - a for a, c in zip(acc, cells)],
            ]
            xs = [
                k * (1 + 0.03 * (i - len(results) / 2)) for k in shots
            ]  # offset so error bars do not overlap
            ax.errorbar(xs, acc, yerr=err, marker="o", capsize=2, color=f"C{i}", label=f"{row['params']:,}")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks(SHOTS, [str(k) for k in SHOTS])
        ax.set_xlabel("examples in the prompt (k)")
        ax.set_title(f"{kind} questions (English, never trained as Q&A), 95% CI", fontsize=9)
        ax.set_ylim(-0.03, 1.0)
    axes[0][0].set_ylabel("exact match")
    axes[0][-1].legend(title="parameters", fontsize=7, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
