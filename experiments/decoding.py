"""Decoding and repetition on danlu's world: greedy, beam, the repetition penalties, temperature, top-k, top-p
and contrastive decoding, measured by distinct-n, the repetition rate and the model's own perplexity.

Notes 002 (解码部署): greedy search "focuses on the local optimum and produces unnatural, repetitive
sentences" in open-ended generation such as stories; beam search keeps the n best prefixes, with a length
penalty because without one it prefers short outputs; the n-gram, presence and frequency penalties lower the
logits of what was already said, "milder" fixes of greedy's repetition; sampling adds diversity, tempered by
the temperature, top-k and top-p (nucleus: the smallest set reaching probability p, where a fixed k cannot
adapt to the context); contrastive decoding (Li et al. 2023) subtracts a small model's log-probabilities.

Every method continues the same prompts, the opening sentence of the world's held-out documents (its stories,
"This is a story about Yuli.", then other texts), through the one engine (`danlu.generate.engine.run`), and is scored on:
- distinct-1 / distinct-2 (Li et al. 2016) over words, pooled over all samples: diversity;
- the repetition rate (Welleck et al. 2020's seq-rep-4): the share of a sample's 4-grams that repeat an
  earlier one of the same sample: degenerate loops;
- the perplexity of the continuation under the model itself (raw logits, no penalty): how far a method leaves
  the text the model finds likely (Holtzman et al. 2020 compare with human text: too low is bland, too high
  is incoherent);
with the held-out stories' own continuations (cut to the same length) as the reference row.

    python experiments/decoding.py                       # trains the world model into runs/lab if needed
    python experiments/decoding.py --model runs/demo/pretrain/checkpoint --world runs/demo/world

Writes OUT/decoding.json and OUT/decoding.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from world_model import add_model_args, world_model  # noqa: E402

# name -> (generation options, uses the amateur model). Greedy-based first, then the samplers.
METHODS: dict[str, tuple[dict, bool]] = {
    "greedy": ({}, False),
    "beam 4": ({"num_beams": 4, "length_penalty": 1.0}, False),
    "beam 4, lp 0": ({"num_beams": 4, "length_penalty": 0.0}, False),
    "repetition 1.3": ({"repetition_penalty": 1.3}, False),
    "presence 1.0": ({"presence_penalty": 1.0}, False),
    "frequency 1.0": ({"frequency_penalty": 1.0}, False),
    "no-repeat 3-gram": ({"no_repeat_ngram_size": 3}, False),
    "contrastive": ({"contrastive_alpha": 0.1}, True),
    "temperature 0.7": ({"temperature": 0.7}, False),
    "temperature 1.0": ({"temperature": 1.0}, False),
    "temperature 1.5": ({"temperature": 1.5}, False),
    "top-k 10": ({"temperature": 1.0, "top_k": 10}, False),
    "top-p 0.9": ({"temperature": 1.0, "top_p": 0.9}, False),
}


def story_prompts(world: Path, n: int) -> tuple[list[str], list[str]]:
    """(opening sentence, rest) of up to n held-out English documents of more than one sentence: the stories
    first ("This is a story about Yuli."; the small world holds out only 17), then the other texts (a person's
    or a place's facts, "Bonalen likes to eat honey. ..."). The opening keeps no trailing space: byte-level BPE
    joins a word's space to the word, so a lone final space is a token the model rarely saw in that place (it
    then ignores the prompt and starts a page of sums)."""
    from danlu.data.formats import read_texts

    english = [
        t for t in read_texts(world / "pretrain_val.jsonl") if t[:1].isalpha() and t.isascii() and ". " in t
    ]
    stories = [t for t in english if t.startswith("This is a story about")]
    ordered = stories + [t for t in english if not t.startswith("This is a story about")]
    if not ordered:
        raise SystemExit(
            f"{world}/pretrain_val.jsonl holds no English document; pass a world folder (`danlu world`)"
        )
    pairs = [t.split(". ", 1) for t in ordered[:n]]
    return [p + "." for p, _ in pairs], [" " + rest for _, rest in pairs]


def continuation_nll(model, prompt_ids: list[list[int]], new_ids: list[list[int]]) -> tuple[float, int]:
    """Σ −log p(new token | prompt, earlier new tokens) under the model's raw logits, and the token count."""
    import torch

    from danlu.nn.logprobs import token_logprobs

    total, count = 0.0, 0
    with torch.no_grad():
        for p, c in zip(prompt_ids, new_ids, strict=True):
            if not c:
                continue
            ids = torch.tensor([p + c])  # (1, T)
            logits = model(ids).logits[:, len(p) - 1 : -1]  # (1, len(c), V): position t predicts token t + 1
            total -= float(token_logprobs(logits, torch.tensor([c])).sum())
            count += len(c)
    return total, count


def score(texts: list[str], ids: list[list[int]], nll: float, n_tokens: int) -> dict:
    from danlu.eval.diversity import distinct_n, repetition_rate, words

    split = [words(t) for t in texts]
    return {
        "token_repetition_3": repetition_rate(ids, 3),  # over the model's tokens: what no-repeat-3 forbids
        "distinct_1": distinct_n(split, 1),
        "distinct_2": distinct_n(split, 2),
        "repetition_4": repetition_rate(split, 4),
        "perplexity": math.exp(nll / n_tokens) if n_tokens else float("nan"),
        "mean_tokens": n_tokens / max(1, len(texts)),
    }


def train_amateur(args: argparse.Namespace, tokenizer, world: Path):
    """Contrastive decoding's amateur: a 1-layer, 32-wide GPT of the same tokenizer, trained briefly."""
    from danlu.train.config import TrainConfig
    from danlu.train.pretrain import pretrain

    cfg = TrainConfig(
        max_steps=args.amateur_steps, batch_size=16, block_size=args.block_size, lr=3e-3,
        warmup_steps=max(1, args.amateur_steps // 20), eval_interval=args.amateur_steps, eval_batches=4,
        device="cpu", seed=args.seed, show_progress=False,
    )  # fmt: skip
    overrides = dict(n_layer=1, n_head=2, n_kv_head=2, n_embd=32)
    r = pretrain(world, tokenizer, args.out / "amateur", "llama-tiny", cfg, model_overrides=overrides)
    print(f"amateur: 1 × 32, {args.amateur_steps} steps, validation loss {r.summary['final_val_loss']:.3f}")
    return r.model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(ap)
    ap.add_argument("--out", type=Path, default=Path("runs/decoding"))
    ap.add_argument("--prompts", type=int, default=100, help="held-out document openings (stories first)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument(
        "--min-new-tokens",
        type=int,
        help="end-of-text forbidden before this many tokens (default: all of them)",
    )
    ap.add_argument("--amateur-steps", type=int, default=150, help="steps of contrastive decoding's amateur")
    ap.add_argument("--methods", nargs="*", help=f"a subset of {list(METHODS)}")
    args = ap.parse_args(argv)

    from danlu.generate.engine import run

    args.out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, world = world_model(args)
    prompts, rests = story_prompts(world, args.prompts)
    prompt_ids = [tokenizer.encode(p) for p in prompts]
    methods = {k: METHODS[k] for k in (args.methods or METHODS)}
    amateur = train_amateur(args, tokenizer, world) if any(a for _, a in methods.values()) else None

    # The reference: the documents' own continuations, cut to the tokens a sample may have.
    ref_ids = [
        tokenizer.encode(p + r)[len(ids) :][: args.max_new_tokens]
        for p, r, ids in zip(prompts, rests, prompt_ids)
    ]
    results = {"reference (held-out text)": score([tokenizer.decode(x) for x in ref_ids], ref_ids,
                                                  *continuation_nll(model, prompt_ids, ref_ids))}  # fmt: skip
    samples: dict[str, list[str]] = {}
    # Every sample as long as the others (distinct-n falls with length, so equal lengths keep it comparable), and
    # long enough to outlast a world story: what a method does when the likely text has run out is the question.
    min_new = args.max_new_tokens if args.min_new_tokens is None else args.min_new_tokens
    seeds = [args.seed * 100_003 + i for i in range(len(prompt_ids))]  # each sampled row its own stream
    for name, (options, contrastive) in methods.items():
        t0 = time.perf_counter()
        done = run(
            model, tokenizer, prompt_ids, max_new_tokens=args.max_new_tokens, min_new_tokens=min_new,
            row_seeds=seeds if options.get("temperature", 0) > 0 else None,
            amateur_model=amateur if contrastive else None, **options,
        )  # fmt: skip
        texts, new_ids = [c.text for c in done], [list(c.token_ids) for c in done]
        results[name] = score(texts, new_ids, *continuation_nll(model, prompt_ids, new_ids))
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        samples[name] = texts[:3]
        r = results[name]
        print(f"{name:>18}: distinct-1 {r['distinct_1']:.3f}  distinct-2 {r['distinct_2']:.3f}  "
              f"rep-4 {r['repetition_4']:.3f}  ppl {r['perplexity']:7.2f}  ({r['seconds']} s)")  # fmt: skip

    print("\n| method | distinct-1 | distinct-2 | repetition (rep-4) | perplexity | tokens |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['distinct_1']:.3f} | {r['distinct_2']:.3f} | {r['repetition_4']:.3f} | "
              f"{r['perplexity']:.2f} | {r['mean_tokens']:.1f} |")  # fmt: skip
    report = {"prompts": prompts[:3], "n_prompts": len(prompts), "results": results, "samples": samples}
    (args.out / "decoding.json").write_text(
        json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8"
    )
    plot(results, args.out / "decoding.png")
    print(f"wrote {args.out / 'decoding.json'} and {args.out / 'decoding.png'}")
    return 0


def plot(results: dict[str, dict], path: Path) -> None:
    from danlu.plots import new_figure, save_figure

    fig = new_figure(13, 4.5)
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2], "wspace": 0.9})
    markers = "*os^vD<>pPXhd8"
    for i, (name, r) in enumerate(results.items()):
        reference = name.startswith("reference")
        ax.scatter(r["perplexity"], r["distinct_2"], s=120 if reference else 45, marker=markers[i % len(markers)],
                   color="black" if reference else f"C{i % 10}", label=name, alpha=0.85)  # fmt: skip
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xscale("log")
    ax.set_xlabel("perplexity of the samples under the model (log)")
    ax.set_ylabel("distinct-2 over all samples")
    ax.grid(alpha=0.3)
    names = list(results)
    bx.barh(range(len(names)), [results[n]["repetition_4"] for n in names], color="C3")
    bx.set_yticks(range(len(names)), names, fontsize=7)
    bx.invert_yaxis()
    bx.set_xlabel("repetition rate (share of repeated 4-grams in a sample)")
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
