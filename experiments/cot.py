"""Chain of thought on danlu's world: worked steps vs direct answers on two-step arithmetic.

Notes 004 (CoT): asking a model to write the intermediate steps ("let's think step by step", Kojima et al.
2022; worked examples, Wei et al. 2022) makes multi-step problems solvable that it fails when it must answer at
once. A mechanism is easy to state for a Transformer: a direct answer must be computed inside one forward pass
per token, while each written step becomes input to the next, so a chain of one-operation steps, each of which
the model learned in pretraining, composes into a two-operation result.

The world's pretraining text holds single-operation sums ("9 * 4 = 36") but no problem of two operations. Two
SFT runs start from the same pretrained model, with the same steps, on the same 240 two-step problems
("What is 3 + 4 then times 5?"); one is trained to answer directly ("The answer is 35."), the other with the
worked steps first ("3 + 4 = 7. 7 * 5 = 35. The answer is 35."). Both are then asked 120 new problems and
scored on the final number; the CoT run's steps are also checked one by one.

    python experiments/cot.py --model runs/demo/pretrain/checkpoint

Writes OUT/cot.json and OUT/cot.png.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

OPS = {"+": ("plus", lambda a, b: a + b), "-": ("minus", lambda a, b: a - b), "*": ("times", lambda a, b: a * b)}


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("runs/demo/pretrain/checkpoint"))
    ap.add_argument("--out", type=Path, default=Path("runs/cot"))
    ap.add_argument("--train", type=int, default=240)
    ap.add_argument("--test", type=int, default=120)
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import danlu
    from danlu.train.config import TrainConfig
    from danlu.tune.sft import sft

    train_p = problems(args.train, args.seed)
    test_p = problems(args.test, args.seed + 1, exclude=set(train_p))
    results: dict[str, dict] = {}
    for style in ("direct", "cot"):
        model, tokenizer = danlu.load(args.model)
        records = [
            {"instruction": question(p), "input": "", "output": worked(p)[style == "cot"]} for p in train_p
        ]
        cfg = TrainConfig(
            max_steps=args.max_steps,
            batch_size=16,
            block_size=min(128, model.config.block_size),
            lr=1e-3,
            warmup_steps=10,
            eval_interval=args.max_steps,
            seed=args.seed,
            device="cpu",
            show_progress=False,
        )
        tuned = sft(model, tokenizer, records, args.out / style, cfg, val_records=records[:16]).model.eval()
        prompts = [
            tokenizer.apply_chat_template([{"role": "user", "content": question(p)}], add_generation_prompt=True)
            for p in test_p
        ]
        replies = danlu.generate(tuned, tokenizer, prompts, max_new_tokens=40)
        truth = [int(worked(p)[0].split()[-1].rstrip(".")) for p in test_p]
        correct = [final_number(r) == t for r, t in zip(replies, truth, strict=True)]
        results[style] = {
            "accuracy": sum(correct) / len(correct),
            "steps_right": sum(steps_right(p, r) for p, r in zip(test_p, replies, strict=True)) / len(test_p)
            if style == "cot"
            else None,
            "samples": [
                {"question": question(p), "reply": r, "truth": t}
                for p, r, t in zip(test_p[:8], replies[:8], truth[:8], strict=True)
            ],
        }
        print(f"{style:>6}: accuracy {results[style]['accuracy']:.3f} on {len(test_p)} new two-step problems")
        if style == "cot":
            print(f"        both written steps right: {results[style]['steps_right']:.3f}")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cot.json").write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    _plot(results, args.out / "cot.png")
    print(f"wrote {args.out / 'cot.json'} and {args.out / 'cot.png'}")
    return 0


def _plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    names = ["direct answer", "chain of thought"]
    values = [results["direct"]["accuracy"], results["cot"]["accuracy"]]
    bars = ax.bar(names, values, color=["C0", "C1"])
    ax.bar_label(bars, [f"{v:.2f}" for v in values])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy on new two-step problems")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
