"""A look inside the world model: the logit lens across layers and the attention maps for one world fact.

The logit lens (nostalgebraist 2020) un-embeds the residual stream after every block with the model's final
norm and LM head, as if the network ended there: at which depth does "The capital of Dedoto is" start to
predict " Zadan"? The attention maps show, per layer and head, which earlier tokens each position reads.
Both come from `danlu.eval.lens` (hooks on the one forward; the last layer's lens is the model's logits).

The fact is the world's first capital fact stated in pretraining (`facts.jsonl`, heldout false); the same
per-layer probability and rank of the right answer are also averaged over every capital fact of the world,
and over the people's home cities ("Hasezo lives in" -> " Rotor"), held-in (stated in pretraining text) and
held-out (never stated anywhere: the world holds out only people's facts), where no layer should find the
answer.

    python experiments/inside.py                       # trains the world model into runs/lab if needed
    python experiments/inside.py --model runs/demo/pretrain/checkpoint --world runs/demo/world

Writes OUT/inside.json, OUT/lens.png and OUT/attention.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from world_model import add_model_args, world_model  # noqa: E402


def fact_prompts(world: Path, relation: str, template: str) -> list[dict]:
    """{"prompt", "answer", "heldout"} for every fact of `relation`, the prompt from its English sentence."""
    from danlu.data.formats import read_jsonl

    out = []
    for f in read_jsonl(world / "facts.jsonl", None):
        if f["relation"] == relation:
            out.append(
                {"prompt": template.format(s=f["subject"]), "answer": f["object"], "heldout": f["heldout"]}
            )
    return out


def answer_token(tokenizer, prompt: str, answer: str) -> int:
    """The first token of " answer" as the tokenizer splits the whole sentence (byte-level BPE merges the
    space into the word)."""
    p = tokenizer.encode(prompt)
    full = tokenizer.encode(prompt + " " + answer)
    if full[: len(p)] != p:
        raise SystemExit(f"the prompt {prompt!r} is not a token prefix of its sentence; pick another fact")
    return full[len(p)]


def per_layer(model, tokenizer, prompt: str, answer: str) -> dict:
    """Probability and rank (1 = top) of the answer's first token after each layer, at the last position."""
    import torch

    from danlu.eval.lens import logit_lens

    ids = torch.tensor([tokenizer.encode(prompt)])
    target = answer_token(tokenizer, prompt, answer)
    probs = logit_lens(model, ids)[:, 0].float().softmax(-1)  # (L + 1, V)
    rank = (probs > probs[:, target : target + 1]).sum(-1) + 1  # (L + 1,)
    return {"prob": probs[:, target].tolist(), "rank": rank.tolist(), "top": probs.argmax(-1).tolist()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(ap)
    ap.add_argument("--out", type=Path, default=Path("runs/inside"))
    args = ap.parse_args(argv)

    import torch

    from danlu.eval.lens import attention_maps, logit_lens

    args.out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, world = world_model(args)
    capitals = fact_prompts(world, "country.capital", "The capital of {s} is")
    homes = fact_prompts(world, "person.home", "{s} lives in")
    fact = next(f for f in capitals if not f["heldout"])
    print(f"fact: {fact['prompt']!r} -> {fact['answer']!r}")

    ids = torch.tensor([tokenizer.encode(fact["prompt"])])
    tokens = [tokenizer.decode([i]) for i in ids[0].tolist()]
    lens = logit_lens(model, ids)[:, 0]  # (L + 1, V) at the last position
    grid = _lens_grid(model, ids, tokenizer)  # top token and its probability per (layer, position)
    one = per_layer(model, tokenizer, fact["prompt"], fact["answer"])
    L = len(one["prob"]) - 1
    print("layer  p(answer)  rank  top token")
    for layer in range(L + 1):
        name = "embed" if layer == 0 else f"{layer}"
        print(
            f"{name:>5}  {one['prob'][layer]:9.4f}  {one['rank'][layer]:4d}  {tokenizer.decode([one['top'][layer]])!r}"
        )
    final_top = tokenizer.decode([int(lens[-1].argmax())])

    groups = {
        "capitals, held-in": [f for f in capitals if not f["heldout"]],
        "home cities, held-in": [f for f in homes if not f["heldout"]],
        "home cities, held-out": [f for f in homes if f["heldout"]],
    }
    means = {}
    for name, facts in groups.items():
        rows = [per_layer(model, tokenizer, f["prompt"], f["answer"]) for f in facts]
        if not rows:
            continue
        means[name] = {
            "n": len(rows),
            "mean_prob": [sum(r["prob"][i] for r in rows) / len(rows) for i in range(L + 1)],
            "top1": [sum(r["rank"][i] == 1 for r in rows) / len(rows) for i in range(L + 1)],
            "median_rank": [sorted(r["rank"][i] for r in rows)[len(rows) // 2] for i in range(L + 1)],
        }
        m = means[name]
        print(f"{name} (n = {m['n']}): top-1 per layer {[round(x, 2) for x in m['top1']]}, "
              f"median rank {m['median_rank']}")  # fmt: skip

    maps = attention_maps(model, ids)[:, 0]  # (L, n_head, T, T)
    report = {"fact": fact, "tokens": tokens, "final_top": final_top, "per_layer": one, "groups": means,
              "attention": maps.tolist(), "lens_grid": grid}  # fmt: skip
    (args.out / "inside.json").write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    plot_lens(grid, tokens, one, means, fact, args.out / "lens.png")
    plot_attention(maps, tokens, args.out / "attention.png")
    print(f"wrote {args.out / 'inside.json'}, {args.out / 'lens.png'} and {args.out / 'attention.png'}")
    return 0


def _lens_grid(model, ids, tokenizer) -> dict:
    """Top token (text) and its probability after each layer at every position: (L + 1) × T each."""
    from danlu.eval.lens import residual_stream

    hidden, _ = residual_stream(model, ids)  # (L + 1, 1, T, C)
    probs = model.lm_head(model.norm_f(hidden[:, 0])).float().softmax(-1)  # (L + 1, T, V)
    p, top = probs.max(-1)
    return {"prob": p.tolist(), "token": [[tokenizer.decode([t]) for t in row] for row in top.tolist()]}


def plot_lens(grid: dict, tokens: list[str], one: dict, means: dict, fact: dict, path: Path) -> None:
    import numpy as np

    from danlu.plots import new_figure, save_figure

    prob = np.array(grid["prob"])  # (L + 1, T)
    n_rows, T = prob.shape
    fig = new_figure(13, 4.6)
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    ax.imshow(prob, cmap="Blues", vmin=0, vmax=1, aspect="auto", origin="lower")
    for r in range(n_rows):
        for t in range(T):
            ax.text(t, r, grid["token"][r][t].strip() or "␣", ha="center", va="center", fontsize=7,
                    color="white" if prob[r, t] > 0.6 else "black")  # fmt: skip
    ax.set_xticks(range(T), [t.strip() or "␣" for t in tokens], fontsize=8)
    ax.set_yticks(range(n_rows), ["embed", *[f"layer {i}" for i in range(1, n_rows)]], fontsize=8)
    ax.set_title(f"logit lens: top next token after each layer (colour: its probability)\n{fact['prompt']!r}",
                 fontsize=9)  # fmt: skip
    layers = range(n_rows)
    bx.plot(layers, one["prob"], "o-", color="black", label=f"p({fact['answer']}) for this fact")
    for i, (name, m) in enumerate(means.items()):
        bx.plot(
            layers, m["top1"], "s--", color=f"C{i}", markersize=4, label=f"{name}: top-1 share (n={m['n']})"
        )
    bx.set_xticks(list(layers), ["embed", *[str(i) for i in range(1, n_rows)]])
    bx.set_xlabel("layer")
    bx.set_ylim(-0.02, 1.02)
    bx.set_title("the right answer's first token, at the last position", fontsize=9)
    bx.legend(fontsize=7)
    bx.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_attention(maps, tokens: list[str], path: Path) -> None:
    from danlu.plots import new_figure, save_figure

    L, H, T, _ = maps.shape
    fig = new_figure(2.4 * H + 0.5, 2.4 * L + 0.5)
    axes = fig.subplots(L, H, squeeze=False)
    labels = [t.strip() or "␣" for t in tokens]
    for layer in range(L):
        for head in range(H):
            ax = axes[layer][head]
            ax.imshow(maps[layer, head].numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(T), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(T), labels, fontsize=6)
            ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=8)
    fig.suptitle("attention weights over the prompt (row: query, column: key)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
