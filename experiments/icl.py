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

    python experiments/icl.py --runs runs/scaling --world runs/scaling/world     # the models of scaling.py
    python experiments/icl.py --model runs/demo/pretrain/checkpoint --world runs/demo/world

Writes OUT/icl.json and OUT/icl.png.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SHOTS = (0, 1, 2, 4, 8)
KINDS = ("fact", "arith")


def _records(world: Path, kind: str, lang: str) -> tuple[list[dict], list[dict]]:
    from danlu.data.formats import read_jsonl

    train = [r for r in read_jsonl(world / "sft_train.jsonl", "sft") if r["kind"] == kind and r["lang"] == lang]
    test = [r for r in read_jsonl(world / "sft_test.jsonl", "sft") if r["kind"] == kind and r["lang"] == lang]
    return train, test


def _template(shots: list[dict]):
    from danlu.app.prompts import FewShotTemplate, PromptTemplate

    return FewShotTemplate(
        examples=shots,
        example=PromptTemplate("Q: {instruction}\nA: {output}"),
        suffix=PromptTemplate("Q: {instruction}\nA:"),
        separator="\n\n",
    )


def score(model, tokenizer, train: list[dict], test: list[dict], k: int, seed: int) -> float:
    """Exact match of `model` on `test` with k examples from `train` (a fresh draw per question, seeded)."""
    import danlu
    from danlu.eval.text import exact_match

    rng = random.Random(seed * 1000 + k)
    prompts = [_template(rng.sample(train, k)).format(instruction=r["instruction"]) for r in test]
    replies = danlu.generate(model, tokenizer, prompts, max_new_tokens=24)
    answers = [reply.strip().split("\n")[0].strip() for reply in replies]
    accepted = [[r["output"], str(r["answer"])] for r in test]
    return exact_match(answers, accepted)


def _models(args: argparse.Namespace) -> list[tuple[str, Path]]:
    if args.model:
        return [(p.parent.name if p.name == "checkpoint" else p.name, p) for p in args.model]
    runs = sorted(
        (d for d in (args.runs / "runs").iterdir() if d.name.endswith(f"_S{args.steps}")),
        key=lambda d: json.loads((d / "checkpoint" / "config.json").read_text())["hidden_size"],
    )
    if not runs:
        raise SystemExit(f"error: no run ending in _S{args.steps} in {args.runs / 'runs'}; run scaling.py first")
    return [(d.name, d / "checkpoint") for d in runs]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=Path("runs/scaling"), help="the OUT folder of scaling.py")
    p.add_argument("--steps", type=int, default=300, help="which budget of scaling.py's runs to use")
    p.add_argument("--model", type=Path, nargs="*", help="checkpoints to use instead of --runs")
    p.add_argument("--world", type=Path, default=None, help="the world folder (default: RUNS/world)")
    p.add_argument("--limit", type=int, default=100, help="questions per kind")
    p.add_argument("--out", type=Path, default=None, help="default: the --runs folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    world = args.world or args.runs / "world"
    out = args.out or args.runs
    out.mkdir(parents=True, exist_ok=True)

    import danlu

    results = []
    for name, path in _models(args):
        model, tokenizer = danlu.load(path)
        n_params = sum(q.numel() for q in model.parameters())
        row = {"model": name, "params": n_params}
        for kind in KINDS:
            train, test = _records(world, kind, "en")
            test = test[: args.limit]
            row[kind] = {k: score(model, tokenizer, train, test, k, args.seed) for k in SHOTS}
        results.append(row)
        print(f"{name:<16} {n_params:>10,} params  " + "  ".join(
            f"{kind} " + " ".join(f"{k}:{row[kind][k]:.2f}" for k in SHOTS) for kind in KINDS
        ))

    print("\n| model | params | " + " | ".join(f"{kind} k={k}" for kind in KINDS for k in SHOTS) + " |")
    print("|---|---:|" + "---:|" * (len(KINDS) * len(SHOTS)))
    for row in results:
        cells = " | ".join(f"{row[kind][k]:.2f}" for kind in KINDS for k in SHOTS)
        print(f"| {row['model']} | {row['params']:,} | {cells} |")
    (out / "icl.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    _plot(results, out / "icl.png")
    print(f"wrote {out / 'icl.json'} and {out / 'icl.png'}")
    return 0


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(KINDS), figsize=(10, 4), sharey=True)
    for ax, kind in zip(axes, KINDS, strict=True):
        for i, row in enumerate(results):
            ax.plot(SHOTS, [row[kind][k] for k in SHOTS], marker="o", color=f"C{i}", label=f"{row['params']:,}")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks(SHOTS, [str(k) for k in SHOTS])
        ax.set_xlabel("examples in the prompt (k)")
        ax.set_title(f"{kind} questions (English, never trained as Q&A)", fontsize=9)
    axes[0].set_ylabel("exact match")
    axes[-1].legend(title="parameters", fontsize=7, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
