"""Does SFT inject knowledge? The notes' claim, tested on danlu's world.

Notes 002 (quoting Sutskever): large-scale pretraining *compresses world knowledge* into the parameters; the
common corollary is that SFT teaches a model how to answer (format, style), not what it knows. The world lets us
test it exactly, because some facts ("held-out") never appear in any pretraining text.

One SFT run, so every comparison is within the same model. Its training set is the world's `sft_train.jsonl`
(questions about the "sft" facts, arithmetic, translation) plus the ENGLISH question of:
  - half of the held-in probe facts (stated in pretraining, never asked in sft_train)   -> group "held-in"
  - half of the held-out facts (absent from pretraining: SFT is their only source)      -> group "held-out"
Evaluated after SFT, exact match on:
  trained question   the English questions SFT saw (memorising them is easy: it was trained on them)
  unseen question    the CHINESE question about the same facts: never trained; answering it needs the fact
                     itself, stored in a form a new question can reach
  never in SFT       the other half of the facts, not asked in SFT at all (the usual sft_test "fact" kinds)
The claim predicts: held-in facts answer unseen questions well (pretraining stored them in both languages and
SFT only taught the format), held-out facts do not (SFT memorised English question -> answer strings).

    python experiments/sft_knowledge.py --model runs/demo/pretrain/checkpoint --world runs/demo/world
    python experiments/sft_knowledge.py            # pretrains first with the demo's defaults (~5 min)

Writes OUT/sft_knowledge.json and OUT/sft_knowledge.png.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

GROUPS = ("held-in", "held-out")
SPLITS = ("trained question (EN)", "unseen question (ZH)", "never in SFT")


def _fact_records(world_dir: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """(sft_train, probe-fact questions, held-out-fact questions) from a world folder."""
    from danlu.data.formats import read_jsonl

    train = read_jsonl(world_dir / "sft_train.jsonl", "sft")
    test = read_jsonl(world_dir / "sft_test.jsonl", "sft")
    return train, [r for r in test if r["kind"] == "fact"], [r for r in test if r["kind"] == "fact_heldout"]


def _by_fact(records: list[dict]) -> dict[str, dict[str, dict]]:
    """{fact id: {"en": question record, "zh": question record}} for facts asked in both languages."""
    out: dict[str, dict[str, dict]] = {}
    for r in records:
        out.setdefault(r["fact_id"], {})[r["lang"]] = r
    return {k: v for k, v in out.items() if set(v) == {"en", "zh"}}


def _attach_fact_ids(world_dir: Path, records: list[dict]) -> None:
    """Give each fact question its fact id by matching its answer and relation against facts.jsonl and the
    subject's name appearing in the question (English name or Chinese name)."""
    from danlu.data.formats import read_jsonl

    facts = read_jsonl(world_dir / "facts.jsonl")
    index: dict[tuple, list[dict]] = {}
    for f in facts:
        for answer in {f["object"], f["object_zh"]}:  # a number is the same in both languages
            index.setdefault((f["relation"], answer), []).append(f)
    for r in records:
        key = "subject" if r["lang"] == "en" else "subject_zh"
        cands = [f for f in index.get((r["relation"], r["answer"]), []) if f[key] in r["instruction"]]
        # One name can sit inside another (罗兰 in 莉罗兰): the subject is the longest name found.
        longest = max((len(f[key]) for f in cands), default=0)
        cands = [f for f in cands if len(f[key]) == longest]
        if len(cands) != 1:
            raise SystemExit(
                f"cannot pair question {r['instruction']!r} with one fact ({len(cands)} candidates)"
            )
        r["fact_id"] = cands[0]["id"]


def run(model_dir: Path, world_dir: Path, out: Path, steps: int, seed: int, device: str) -> dict:
    import copy

    import danlu
    from danlu.train.loop import TrainConfig
    from danlu.tune.evaluate import answers, exact_match_by_kind
    from danlu.tune.sft import sft

    pretrained, tok = danlu.load(model_dir, device=device)
    train, probe, heldout = _fact_records(world_dir)
    _attach_fact_ids(world_dir, probe + heldout)
    rng = random.Random(seed)
    groups: dict[str, dict[str, list[dict]]] = {}
    extra: list[dict] = []
    for name, records in (("held-in", probe), ("held-out", heldout)):
        pairs = sorted(_by_fact(records).items())
        rng.shuffle(pairs)
        taught, untaught = pairs[: len(pairs) // 2], pairs[len(pairs) // 2 :]
        groups[name] = {
            SPLITS[0]: [p["en"] for _, p in taught],
            SPLITS[1]: [p["zh"] for _, p in taught],
            SPLITS[2]: [r for _, p in untaught for r in (p["en"], p["zh"])],
        }
        extra += groups[name][SPLITS[0]]
    # The added English questions are repeated so each is seen about as often as a sft_train question.
    model = copy.deepcopy(pretrained).train()
    cfg = TrainConfig(max_steps=steps, batch_size=32, block_size=128, lr=5e-4, warmup_steps=steps // 20,
                      eval_interval=max(1, steps // 4), eval_batches=4, weight_decay=0.0, seed=seed, device=device,
                      show_progress=False)  # fmt: skip
    result = sft(model, tok, train + extra, out / "sft", cfg)
    table: dict[str, dict[str, float]] = {}
    for label, m in (("pretrained", pretrained), ("SFT", result.model)):
        for name in GROUPS:
            for split in SPLITS:
                recs = groups[name][split]
                em = exact_match_by_kind(recs, answers(m, tok, recs))["overall"]
                table.setdefault(label, {})[f"{name} / {split}"] = round(em, 4)
    counts = {name: {split: len(groups[name][split]) for split in SPLITS} for name in GROUPS}
    report = {
        "model": str(model_dir),
        "world": str(world_dir),
        "steps": steps,
        "exact_match": table,
        "counts": counts,
    }
    (out / "sft_knowledge.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    _plot(table["SFT"], counts, out / "sft_knowledge.png")
    return report


def _plot(em: dict[str, float], counts: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.38
    for i, name in enumerate(GROUPS):
        vals = [em[f"{name} / {s}"] for s in SPLITS]
        label = {
            "held-in": "held-in facts (stated in pretraining)",
            "held-out": "held-out facts (absent from pretraining)",
        }[name]
        bars = ax.bar([k + i * width for k in range(len(SPLITS))], vals, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks([k + width / 2 for k in range(len(SPLITS))], SPLITS)
    ax.set_ylabel("exact match after SFT")
    ax.set_ylim(0, 1.08)
    ax.set_title("SFT teaches answers to questions it saw; only pretraining makes facts answerable anew")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default=None, help="pretrained checkpoint (default: pretrain one with the demo)"
    )
    p.add_argument("--world", default=None, help="the world folder that model was pretrained on")
    p.add_argument("--out", default="runs/sft_knowledge")
    p.add_argument("--steps", type=int, default=300, help="SFT steps (the demo's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        from danlu.cli import main as danlu_main

        code = danlu_main(["demo", "--out", str(out / "demo"), "--stages", "world", "tokenizer", "pretrain",
                           "--seed", str(args.seed), "--device", args.device, "--quiet"])  # fmt: skip
        if code:
            return code
        args.model, args.world = out / "demo" / "pretrain" / "checkpoint", out / "demo" / "world"
    if args.world is None:
        p.error("--world is required with --model (the world folder the model was pretrained on)")
    report = run(Path(args.model), Path(args.world), out, args.steps, args.seed, args.device)
    sft_em, pre_em = report["exact_match"]["SFT"], report["exact_match"]["pretrained"]
    print(f"{'':44s} {'pretrained':>10s} {'SFT':>6s}  (n)")
    for key in sft_em:
        name, split = key.split(" / ")
        print(f"{key:44s} {pre_em[key]:10.3f} {sft_em[key]:6.3f}  ({report['counts'][name][split]})")
    print(f"figure: {out / 'sft_knowledge.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
