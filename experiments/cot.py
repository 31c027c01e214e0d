"""Chain of thought on danlu's world: worked steps vs direct answers on two-step arithmetic.

Notes 004 (CoT): asking a model to write the intermediate steps ("let's think step by step", Kojima et al.
2022; worked examples, Wei et al. 2022) makes multi-step problems solvable that it fails when it must answer at
once. A mechanism is easy to state for a Transformer: a direct answer must be computed inside one forward pass
per token, while each written step becomes input to the next, so a chain of one-operation steps, each of which
the model learned in pretraining, composes into a two-operation result.

The world's pretraining text holds single-operation sums ("9 * 4 = 36") but no problem of two operations. Two
SFT runs start from the same pretrained model, with the same steps, on the same 240 two-step problems
("What is 3 + 4 then times 5?"); one is trained to answer directly ("The answer is 35."), the other with the
worked steps first ("3 + 4 = 7. 7 * 5 = 35. The answer is 35."). Both are then asked 240 new problems and
scored on the final number, with 95% percentile-bootstrap intervals (`danlu.eval.bootstrap`) for each accuracy
and for the paired difference; the CoT run's steps are also checked one by one.

    python experiments/cot.py --model runs/demo/pretrain/checkpoint

Writes OUT/cot.json and OUT/cot.png; `run(out_dir)` returns the numbers, the figure and a markdown section.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Any

TEST = 240  # new problems scored: a 95% interval of about ±0.06 at an accuracy of 0.3
OPS = {
    "+": ("plus", lambda a, b: a + b),
    "-": ("minus", lambda a, b: a - b),
    "*": ("times", lambda a, b: a * b),
}


def problems(n: int, seed: int, exclude: set[tuple] = frozenset()) -> list[tuple[int, str, int, str, int]]:
    """n distinct (a, op1, b, op2, c): ((a op1 b) op2 c), small numbers so every step is a pretraining fact."""
    rng = random.Random(seed)
    out: list[tuple] = []
    seen = set(exclude)
    while len(out) < n:
        op1, op2 = rng.choice("+-"), rng.choice("+-*")
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        first = OPS[op1][1](a, b)
        if first < 0 or first > 20:  # keep the intermediate in the range the pretraining sums cover
            continue
        c = rng.randint(1, 10 if op2 == "*" else 20)
        if OPS[op2][1](first, c) < 0:
            continue
        p = (a, op1, b, op2, c)
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def question(p: tuple) -> str:
    a, op1, b, op2, c = p
    return f"What is {a} {OPS[op1][0]} {b}, then {OPS[op2][0]} {c}?"


def worked(p: tuple) -> tuple[str, str]:
    """(direct answer, chain of thought + answer)."""
    a, op1, b, op2, c = p
    first = OPS[op1][1](a, b)
    result = OPS[op2][1](first, c)
    direct = f"The answer is {result}."
    return direct, f"{a} {op1} {b} = {first}. {first} {op2} {c} = {result}. {direct}"


def final_number(text: str) -> int | None:
    m = re.search(r"answer is (-?\d+)", text)
    return int(m.group(1)) if m else None


def steps_right(p: tuple, text: str) -> bool:
    """Whether the reply's two written steps are both the true ones."""
    return worked(p)[1].split(" The answer")[0] in text


def run(out_dir: str | Path, quick: bool = False, model: str | Path = Path("runs/demo/pretrain/checkpoint"),
        n_train: int = 240, n_test: int = TEST, max_steps: int = 500, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """SFT the direct and the CoT style from `model`, score both on the same new problems with 95% bootstrap
    intervals (and the paired CoT − direct difference); numbers, figure and markdown."""
    import danlu
    from danlu.eval.bootstrap import bootstrap_ci
    from danlu.train.config import TrainConfig
    from danlu.tune.sft import sft

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        n_train, n_test, max_steps = min(n_train, 16), min(n_test, 8), min(max_steps, 2)
    max_new_tokens = 8 if quick else 40  # a worked answer is ~25 tokens
    train_p = problems(n_train, seed)
    test_p = problems(n_test, seed + 1, exclude=set(train_p))
    truth = [int(worked(p)[0].split()[-1].rstrip(".")) for p in test_p]
    results: dict[str, Any] = {}
    correct: dict[str, list[float]] = {}
    for style in ("direct", "cot"):
        base, tokenizer = danlu.load(model)
        records = [
            {"instruction": question(p), "input": "", "output": worked(p)[style == "cot"]} for p in train_p
        ]
        cfg = TrainConfig(
            max_steps=max_steps,
            batch_size=16,
            block_size=min(128, base.config.block_size),
            lr=1e-3,
            warmup_steps=min(10, max_steps - 1),
            eval_interval=max_steps,
            seed=seed,
            device="cpu",
            show_progress=False,
        )
        tuned = sft(base, tokenizer, records, out / style, cfg, val_records=records[:16]).model.eval()
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": question(p)}], add_generation_prompt=True
            )
            for p in test_p
        ]
        replies = danlu.generate(tuned, tokenizer, prompts, max_new_tokens=max_new_tokens)
        correct[style] = [float(final_number(r) == t) for r, t in zip(replies, truth, strict=True)]
        mean, low, high = bootstrap_ci(correct[style], seed=seed)
        results[style] = {"accuracy": mean, "ci95": [low, high], "items": len(test_p)}
        if style == "cot":
            steps = [float(steps_right(p, r)) for p, r in zip(test_p, replies, strict=True)]
            m, lo, hi = bootstrap_ci(steps, seed=seed)
            results[style]["steps_right"], results[style]["steps_right_ci95"] = m, [lo, hi]
        results[style]["samples"] = [
            {"question": question(p), "reply": r, "truth": t}
            for p, r, t in zip(test_p[:8], replies[:8], truth[:8], strict=True)
        ]
        print(
            f"{style:>6}: accuracy {mean:.3f} [{low:.3f}, {high:.3f}] on {len(test_p)} new two-step problems"
        )
    # paired: the same problems under both styles, so the interval of the per-problem difference is tighter
    diff = bootstrap_ci([c - d for c, d in zip(correct["cot"], correct["direct"], strict=True)], seed=seed)
    results["cot_minus_direct"] = {"mean": diff[0], "ci95": [diff[1], diff[2]]}
    results["train_problems"], results["max_steps"] = len(train_p), max_steps
    figure = out / "cot.png"
    _plot(results, figure)
    results["figure"] = str(figure)
    results["markdown"] = markdown(results)
    (out / "cot.json").write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    print("\n" + results["markdown"])
    print(f"wrote {out / 'cot.json'} and {figure}")
    return results


def markdown(results: dict) -> str:
    from danlu.eval.bootstrap import format_ci

    d, c, diff = results["direct"], results["cot"], results["cot_minus_direct"]
    return "\n".join([
        "## Chain of thought vs direct answers\n",
        f"| answer style | accuracy on {d['items']} new two-step problems (95% CI) | both written steps right |",
        "|---|---:|---:|",
        f"| direct | {format_ci(d['accuracy'], *d['ci95'], digits=3)} | — |",
        f"| chain of thought | {format_ci(c['accuracy'], *c['ci95'], digits=3)} | "
        f"{format_ci(c['steps_right'], *c['steps_right_ci95'], digits=3)} |",
        "",
        f"CoT − direct on the same problems: {format_ci(diff['mean'], *diff['ci95'], digits=3)} (paired bootstrap).\n",
        f"![CoT]({results['figure']})\n",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("runs/demo/pretrain/checkpoint"))
    ap.add_argument("--out", type=Path, default=Path("runs/cot"))
    ap.add_argument("--train", type=int, default=240)
    ap.add_argument("--test", type=int, default=TEST)
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    run(
        args.out,
        model=args.model,
        n_train=args.train,
        n_test=args.test,
        max_steps=args.max_steps,
        seed=args.seed,
    )
    return 0


def _plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    names = ["direct answer", "chain of thought"]
    values = [results["direct"]["accuracy"], results["cot"]["accuracy"]]
    err = [[v - results[s]["ci95"][0] for v, s in zip(values, ("direct", "cot"))],
           [results[s]["ci95"][1] - v for v, s in zip(values, ("direct", "cot"))]]  # fmt: skip
    bars = ax.bar(names, values, yerr=err, capsize=4, color=["C0", "C1"])
    ax.bar_label(bars, [f"{v:.2f}" for v in values])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"accuracy on {results['direct']['items']} new two-step problems (95% CI)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
