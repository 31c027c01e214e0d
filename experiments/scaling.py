"""Scaling laws on danlu's world: fit L(N, D) = E + A/N^α + B/D^β and predict a size before training it.

Notes 001/003 say a model's loss falls predictably as parameters and data grow (Kaplan et al. 2020); Hoffmann et
al. 2022 ("Chinchilla") fit the loss of many (N, D) runs with

    L(N, D) = E + A / N^α + B / D^β

where N is the number of non-embedding parameters, D the training tokens, E the loss no model can remove (the
text's own entropy), and the two power terms what a finite model and finite data leave on the table. This script
pretrains every size of a grid at three token budgets (each run a full warmup + cosine schedule of its own
length, as Chinchilla does, not snapshots of one long run), fits the five constants as Chinchilla's "approach 3"
(a Huber loss on log L, minimised by L-BFGS from a grid of starts), then predicts the held-out largest size's
loss at each budget *before* training it, trains it, and reports the error.

    python experiments/scaling.py                                   # world + tokenizer made in OUT (~10 min)
    python experiments/scaling.py --world runs/demo/world --tokenizer runs/demo/tokenizer

Writes OUT/scaling.json and OUT/scaling.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

# (n_layer, n_head, n_embd): the fitted sizes, then the held-out one predicted before it is trained.
SIZES = [(1, 2, 16), (2, 2, 32), (2, 4, 48), (3, 4, 64), (4, 4, 96)]
HELD_OUT = (4, 4, 128)
STEPS = (75, 150, 300)  # three token budgets: steps × batch × block tokens each
BATCH, BLOCK = 4, 256  # 1,024 tokens a step; a 256 context leaves room for the 8-shot prompts of experiments/icl.py


def _non_embedding_params(model) -> int:
    """N as Kaplan et al. count it: every parameter except the token (and position) embeddings."""
    skip = {id(model.wte.weight)} | ({id(model.wpe.weight)} if model.wpe is not None else set())
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def _run(world: Path, tokenizer, out: Path, size: tuple[int, int, int], steps: int, seed: int) -> dict:
    from danlu.train.config import TrainConfig
    from danlu.train.pretrain import pretrain

    n_layer, n_head, n_embd = size
    cfg = TrainConfig(
        max_steps=steps,
        batch_size=BATCH,
        block_size=BLOCK,
        lr=3e-3,
        warmup_steps=max(5, steps // 15),
        eval_interval=steps,  # one evaluation, at the end
        eval_batches=20,
        seed=seed,
        device="cpu",
        show_progress=False,
    )
    name = f"L{n_layer}_C{n_embd}_S{steps}"
    t0 = time.perf_counter()
    result = pretrain(
        world,
        tokenizer,
        out / "runs" / name,
        preset="llama-tiny",
        train_config=cfg,
        model_overrides=dict(n_layer=n_layer, n_head=n_head, n_kv_head=n_head, n_embd=n_embd, block_size=BLOCK),
    )
    row = {
        "name": name,
        "n_layer": n_layer,
        "n_embd": n_embd,
        "N": _non_embedding_params(result.model),
        "D": result.summary["tokens"],
        "loss": result.summary["final_val_loss"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"  {name:<14} N={row['N']:>9,}  D={row['D']:>9,}  val loss {row['loss']:.4f}  ({row['seconds']} s)")
    return row


def predict(params: dict[str, float], N: float, D: float) -> float:
    """L(N, D) = E + A/N^α + B/D^β."""
    return params["E"] + params["A"] / N ** params["alpha"] + params["B"] / D ** params["beta"]


def fit(rows: list[dict]) -> dict[str, float]:
    """Chinchilla's approach 3: minimise Σ Huber_δ(log L̂ − log L) over (a, b, e, α, β), with A = e^a, B = e^b,
    E = e^e and log L̂ = logsumexp(a − α log N, b − β log D, e); δ = 1e-3; best of a grid of L-BFGS starts."""
    import numpy as np
    from scipy.optimize import minimize
    from scipy.special import huber, logsumexp

    logN = np.log([r["N"] for r in rows])
    logD = np.log([r["D"] for r in rows])
    logL = np.log([r["loss"] for r in rows])

    def objective(x: np.ndarray) -> float:
        a, b, e, alpha, beta = x
        pred = logsumexp(np.stack([a - alpha * logN, b - beta * logD, np.full_like(logN, e)]), axis=0)
        return float(huber(1e-3, pred - logL).sum())

    best = None
    for a0 in (0.0, 5.0, 10.0):
        for b0 in (0.0, 5.0, 10.0):
            for e0 in (-1.0, 0.0, 0.5):
                for alpha0 in (0.2, 0.5):
                    for beta0 in (0.2, 0.5):
                        r = minimize(objective, np.array([a0, b0, e0, alpha0, beta0]), method="L-BFGS-B")
                        if best is None or r.fun < best.fun:
                            best = r
    a, b, e, alpha, beta = best.x
    return {"A": math.exp(a), "B": math.exp(b), "E": math.exp(e), "alpha": float(alpha), "beta": float(beta)}


def plot(rows: list[dict], held: list[dict], params: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    Ns = np.geomspace(min(r["N"] for r in rows) / 1.5, max(r["N"] for r in held) * 1.5, 100)
    for i, D in enumerate(sorted({r["D"] for r in rows})):
        color = f"C{i}"
        pts = sorted((r["N"], r["loss"]) for r in rows if r["D"] == D)
        ax.scatter(*zip(*pts), color=color, label=f"D = {D / 1e3:.0f}k tokens (fitted runs)")
        ax.plot(Ns, [predict(params, n, D) for n in Ns], color=color, lw=1)
        for h in (h for h in held if h["D"] == D):
            ax.scatter([h["N"]], [h["loss"]], color=color, marker="*", s=160, edgecolor="black", zorder=3)
            ax.scatter([h["N"]], [h["predicted"]], color=color, marker="x", s=60, zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(
        f"L = {params['E']:.2f} + {params['A']:.3g}/N^{params['alpha']:.2f} + {params['B']:.3g}/D^{params['beta']:.2f}"
        "   (★ held-out size, × its prediction)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", type=Path, help="a world folder (default: `danlu world` into OUT/world)")
    p.add_argument("--tokenizer", type=Path, help="a tokenizer folder (default: a 2048-token BPE of the world)")
    p.add_argument("--out", type=Path, default=Path("runs/scaling"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads")
    args = p.parse_args(argv)

    import torch

    from danlu.tokenizers.io import load_tokenizer

    torch.set_num_threads(args.threads)  # tiny models: one thread is as fast and does not fight other jobs
    args.out.mkdir(parents=True, exist_ok=True)
    world = args.world
    if world is None:
        from danlu.data.world import write_world

        world = args.out / "world"
        write_world(world, seed=args.seed)
    if args.tokenizer is None:
        from danlu.data.formats import read_jsonl
        from danlu.tokenizers.bpe import BPETokenizer

        texts = [r["text"] for r in read_jsonl(world / "pretrain_train.jsonl", "pretrain")]
        tokenizer = BPETokenizer.train(texts, vocab_size=2048)
        tokenizer.save(args.out / "tokenizer")
    else:
        tokenizer = load_tokenizer(args.tokenizer)

    print(f"fitting {len(SIZES)} sizes × {len(STEPS)} budgets, batch {BATCH} × block {BLOCK}")
    rows = [_run(world, tokenizer, args.out, s, steps, args.seed) for s in SIZES for steps in STEPS]
    params = fit(rows)
    print("fit: " + ", ".join(f"{k}={v:.4g}" for k, v in params.items()))
    N_held = None
    held = []
    for steps in STEPS:  # the prediction is written down before the held-out size is trained
        if N_held is None:
            from danlu.models.gpt import GPT, GPTConfig

            n_layer, n_head, n_embd = HELD_OUT
            probe = GPT(
                GPTConfig.from_name(
                    "llama-tiny",
                    vocab_size=tokenizer.vocab_size,
                    n_layer=n_layer,
                    n_head=n_head,
                    n_kv_head=n_head,
                    n_embd=n_embd,
                    block_size=BLOCK,
                )
            )
            N_held = _non_embedding_params(probe)
        D = steps * BATCH * BLOCK
        held.append({"steps": steps, "N": N_held, "D": D, "predicted": predict(params, N_held, D)})
    print("predicted before training the held-out size:")
    for h in held:
        print(f"  N={h['N']:,} D={h['D']:,}: {h['predicted']:.4f}")
    for h in held:
        h.update(_run(world, tokenizer, args.out, HELD_OUT, h["steps"], args.seed))
        h["error"] = h["predicted"] - h["loss"]
        h["relative_error"] = h["error"] / h["loss"]

    print("\n| held-out size | tokens D | predicted loss | measured loss | error |")
    print("|---|---:|---:|---:|---:|")
    for h in held:
        print(
            f"| L{HELD_OUT[0]} C{HELD_OUT[2]} (N = {h['N']:,}) | {h['D']:,} | {h['predicted']:.3f} | "
            f"{h['loss']:.3f} | {h['error']:+.3f} ({100 * h['relative_error']:+.1f}%) |"
        )
    (args.out / "scaling.json").write_text(
        json.dumps({"fit": params, "runs": rows, "held_out": held}, indent=1), encoding="utf-8"
    )
    plot(rows, held, params, args.out / "scaling.png")
    print(f"wrote {args.out / 'scaling.json'} and {args.out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
