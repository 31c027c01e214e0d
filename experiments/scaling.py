"""Scaling laws on danlu's world: fit L(N, D) = E + A/N^α + B/D^β and predict a size before training it.

Notes 001/003 say a model's loss falls predictably as parameters and data grow (Kaplan et al. 2020); Hoffmann et
al. 2022 ("Chinchilla") fit the loss of many (N, D) runs with

    L(N, D) = E + A / N^α + B / D^β

where N is the number of non-embedding parameters, D the training tokens, E the loss no model can remove (the
text's own entropy), and the two power terms what a finite model and finite data leave on the table.

The design, and why (an earlier version extrapolated to a size 1.8× the largest fitted one from budgets whose
shortest was mostly warmup, and missed by +12.7% / +4.7% / −3.9%):
- one shape (2 layers) and widths spaced geometrically, so N roughly doubles from one size to the next (the
  4× gap between the two largest holds the held-out size); only N varies, not the depth/width ratio Kaplan et
  al. found matters little;
- three budgets a factor 2 apart, each run its own warmup (10%) + cosine to lr/10 over exactly its D, as
  Chinchilla does (a snapshot inside a longer cosine run overstates the loss of a run of that length), the
  longest about one epoch of the world's pretraining text so no run repeats data much;
- the held-out size sits inside the fitted range (between the two largest), where a fitted law is meant to be
  used; its loss is predicted and written down before it is trained;
- the fit: least squares on log L (so every run weighs the same whatever its loss), scipy's bounded trust-region
  solver from a fixed-seed set of starts, E bounded to [0, the lowest measured loss] (E can be no higher than a
  loss some model reached), α and β to [0.05, 2]; plus a leave-one-size-out check on the fitted runs.

    python experiments/scaling.py --jobs 2                          # world + tokenizer made in OUT (240 CPU s)
    python experiments/scaling.py --world runs/demo/world --tokenizer runs/demo/tokenizer

Writes OUT/scaling.json and OUT/scaling.png; `run(out_dir)` returns the numbers, the figure and a markdown
section (for `danlu demo --stages lab`).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# (n_layer, n_head, n_embd): the fitted sizes, then the held-out one predicted before it is trained.
SIZES = [(2, 2, 16), (2, 2, 24), (2, 2, 32), (2, 4, 48), (2, 4, 96)]
HELD_OUT = (2, 4, 64)
STEPS = (80, 160, 320)  # three token budgets: steps × batch × block tokens each
# 1,024 tokens a step; a 256 context leaves room for the 8-shot prompts of experiments/icl.py
BATCH, BLOCK = 4, 256
LR = 3e-3
# quick=True: a smoke run of the whole path (tests, a fast demo), not a fit worth reading
QUICK = {"sizes": [(1, 2, 16), (1, 2, 24), (1, 2, 48)], "held_out": (1, 2, 32), "steps": (4, 8, 16)}


def _non_embedding_params(model) -> int:
    """N as Kaplan et al. count it: every parameter except the token (and position) embeddings."""
    skip = {id(model.wte.weight)} | ({id(model.wpe.weight)} if model.wpe is not None else set())
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def run_name(size: tuple[int, int, int], steps: int) -> str:
    return f"L{size[0]}_C{size[2]}_S{steps}"


def train_one(world: Path, tokenizer_dir: Path, out: Path, size: tuple[int, int, int], steps: int, seed: int,
              batch: int = BATCH, block: int = BLOCK, eval_batches: int = 20) -> dict:  # fmt: skip
    """Pretrain one (size, budget) run into OUT/runs/NAME; its row (N, D, final validation loss, CPU seconds)."""
    from danlu.tokenizers.io import load_tokenizer
    from danlu.train.config import TrainConfig
    from danlu.train.pretrain import pretrain

    n_layer, n_head, n_embd = size
    cfg = TrainConfig(
        max_steps=steps,
        batch_size=batch,
        block_size=block,
        lr=LR,
        warmup_steps=max(2, steps // 10),
        eval_interval=steps,  # one evaluation, at the end; the same 20 validation batches for every run
        eval_batches=eval_batches,
        seed=seed,
        device="cpu",
        show_progress=False,
    )
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = pretrain(
        world,
        load_tokenizer(tokenizer_dir),
        out / "runs" / run_name(size, steps),
        preset="llama-tiny",
        train_config=cfg,
        model_overrides=dict(
            n_layer=n_layer, n_head=n_head, n_kv_head=n_head, n_embd=n_embd, block_size=block
        ),
    )
    return {
        "name": run_name(size, steps),
        "n_layer": n_layer,
        "n_embd": n_embd,
        "steps": steps,
        "N": _non_embedding_params(result.model),
        "D": result.summary["tokens"],
        "epochs": result.summary["epochs"],
        "loss": result.summary["final_val_loss"],
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - cpu0, 1),
    }


def _train_all(jobs: list[tuple], common: dict, n_parallel: int) -> list[dict]:
    """Every (size, steps) of `jobs`, `n_parallel` at a time, each in its own one-thread Python process (so the
    runs neither share a PyTorch thread pool nor need this module to be importable by name)."""
    rows: dict[int, dict] = {}
    if n_parallel <= 1:
        import torch

        torch.set_num_threads(1)  # tiny models: one thread is as fast and does not fight other jobs
        for i, (size, steps) in enumerate(jobs):
            rows[i] = train_one(size=size, steps=steps, **common)
            _say(rows[i])
        return [rows[i] for i in range(len(jobs))]
    pending, running = list(enumerate(jobs)), []
    while pending or running:
        while pending and len(running) < n_parallel:
            i, (size, steps) = pending.pop(0)
            spec = json.dumps({**{k: str(v) if isinstance(v, Path) else v for k, v in common.items()},
                               "size": size, "steps": steps})  # fmt: skip
            cmd = [sys.executable, str(Path(__file__).resolve()), "--one-run", spec]
            running.append((i, subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)))
        time.sleep(0.2)
        for i, proc in list(running):
            if proc.poll() is not None:
                out, _ = proc.communicate()
                if proc.returncode != 0:
                    raise RuntimeError(f"run {jobs[i]} failed (exit {proc.returncode})")
                rows[i] = json.loads(out.strip().splitlines()[-1])
                _say(rows[i])
                running.remove((i, proc))
    return [rows[i] for i in range(len(jobs))]


def _say(row: dict) -> None:
    print(
        f"  {row['name']:<14} N={row['N']:>9,}  D={row['D']:>9,}  val loss {row['loss']:.4f}  "
        f"({row['seconds']} s, {row['cpu_seconds']} CPU s)",
        flush=True,
    )


def predict(params: dict[str, float], N: float, D: float) -> float:
    """L(N, D) = E + A/N^α + B/D^β."""
    return params["E"] + params["A"] / N ** params["alpha"] + params["B"] / D ** params["beta"]


def fit(rows: list[dict], seed: int = 0, starts: int = 64) -> dict[str, float]:
    """Least squares on log L over (E, log A, α, log B, β), bounded, best of `starts` seeded starts."""
    import numpy as np
    from scipy.optimize import least_squares

    N = np.array([r["N"] for r in rows], dtype=float)
    D = np.array([r["D"] for r in rows], dtype=float)
    logL = np.log([r["loss"] for r in rows])
    e_max = float(np.exp(logL.min())) * (1 - 1e-6)  # E no higher than a loss some run reached

    def residual(x: np.ndarray) -> np.ndarray:
        E, a, alpha, b, beta = x
        # log(A/N^α) = a − α log N; logaddexp keeps huge A and tiny N^−α from overflowing
        power = np.logaddexp(a - alpha * np.log(N), b - beta * np.log(D))
        return np.log(E + np.exp(power)) - logL

    lo = np.array([0.0, -10.0, 0.05, -10.0, 0.05])
    hi = np.array([e_max, 40.0, 2.0, 40.0, 2.0])
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(starts):
        x0 = lo + rng.uniform(0.05, 0.6, size=5) * (hi - lo)
        r = least_squares(residual, x0, bounds=(lo, hi), method="trf", x_scale="jac", max_nfev=5000)
        if best is None or r.cost < best.cost:
            best = r
    E, a, alpha, b, beta = best.x
    rms = float(np.sqrt(np.mean(best.fun**2)))
    return {"E": float(E), "A": math.exp(a), "alpha": float(alpha), "B": math.exp(b), "beta": float(beta),
            "rms_log_residual": rms, "E_upper_bound": e_max}  # fmt: skip


def leave_one_size_out(rows: list[dict], seed: int = 0, starts: int = 16) -> list[dict]:
    """Refit without each fitted size in turn and predict its runs: how well the law interpolates/extrapolates
    on runs already made (no extra training)."""
    out = []
    for n in sorted({r["N"] for r in rows}):
        params = fit([r for r in rows if r["N"] != n], seed=seed, starts=starts)
        for r in (r for r in rows if r["N"] == n):
            pred = predict(params, r["N"], r["D"])
            out.append({"name": r["name"], "predicted": pred, "loss": r["loss"],
                        "relative_error": (pred - r["loss"]) / r["loss"]})  # fmt: skip
    return out


def predict_kaplan(params: dict[str, float], N: float, D: float) -> float:
    """Kaplan et al. 2020 eq. 1.5: L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D — no E, and N and D interact
    (a larger model gains more from the same tokens), which the additive form cannot express."""
    ratio = params["alpha_N"] / params["alpha_D"]
    return ((params["N_c"] / N) ** ratio + params["D_c"] / D) ** params["alpha_D"]


def fit_kaplan(rows: list[dict], seed: int = 0, starts: int = 32) -> dict[str, float]:
    """Least squares on log L over (log N_c, α_N, log D_c, α_D), bounded, best of seeded starts."""
    import numpy as np
    from scipy.optimize import least_squares

    logN = np.log([r["N"] for r in rows])
    logD = np.log([r["D"] for r in rows])
    logL = np.log([r["loss"] for r in rows])

    def residual(x: np.ndarray) -> np.ndarray:
        lnc, alpha_n, ldc, alpha_d = x
        return alpha_d * np.logaddexp(alpha_n / alpha_d * (lnc - logN), ldc - logD) - logL

    lo, hi = np.array([0.0, 0.01, 0.0, 0.01]), np.array([60.0, 2.0, 60.0, 2.0])
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(starts):
        x0 = lo + rng.uniform(0.05, 0.6, size=4) * (hi - lo)
        r = least_squares(residual, x0, bounds=(lo, hi), method="trf", x_scale="jac", max_nfev=5000)
        if best is None or r.cost < best.cost:
            best = r
    lnc, alpha_n, ldc, alpha_d = best.x
    return {"N_c": math.exp(lnc), "alpha_N": float(alpha_n), "D_c": math.exp(ldc), "alpha_D": float(alpha_d),
            "rms_log_residual": float(np.sqrt(np.mean(best.fun**2)))}  # fmt: skip


def plot(rows: list[dict], held: list[dict], params: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    Ns = np.geomspace(min(r["N"] for r in rows) / 1.5, max(r["N"] for r in rows + held) * 1.5, 100)
    for i, D in enumerate(sorted({r["D"] for r in rows})):
        color = f"C{i}"
        pts = sorted((r["N"], r["loss"]) for r in rows if r["D"] == D)
        ax.scatter(*zip(*pts), color=color, label=f"D = {D / 1e3:.0f}k tokens (fitted runs)")
        ax.plot(Ns, [predict(params, n, D) for n in Ns], color=color, lw=1)
        for h in (h for h in held if h["D"] == D):
            ax.scatter([h["N"]], [h["loss"]], color=color, marker="*", s=160, edgecolor="black", zorder=3)
            ax.scatter([h["N"]], [h["predicted"]], color="black", marker="x", s=50, zorder=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(
        f"L = {params['E']:.2f} + {params['A']:.3g}/N^{params['alpha']:.2f} + {params['B']:.3g}/D^{params['beta']:.2f}"
        "   (★ held-out size measured, × predicted)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(result: dict) -> str:
    """The report's section: the fit, the held-out table and what it shows."""
    p, k, held = result["fit"], result["fit_kaplan"], result["held_out"]
    worst = max(abs(h["relative_error"]) for h in held)
    loo = max(abs(r["relative_error"]) for r in result["leave_one_size_out"])
    lines = [
        "## Scaling: L(N, D) = E + A/N^α + B/D^β\n",
        f"{len(result['sizes'])} sizes × {len(result['steps'])} budgets (each its own warmup + cosine), fitted by "
        f"least squares on log L; {result['cpu_seconds']:.0f} CPU seconds in all.\n",
        f"Fit: E = {p['E']:.3f} (bounded to [0, {p['E_upper_bound']:.3f}]), A = {p['A']:.3g}, "
        f"α = {p['alpha']:.3f}, B = {p['B']:.3g}, β = {p['beta']:.3f}; RMS log residual {p['rms_log_residual']:.4f}.\n",
        f"Kaplan et al.'s form [(N_c/N)^(α_N/α_D) + D_c/D]^α_D, fitted the same way for comparison: "
        f"N_c = {k['N_c']:.3g}, α_N = {k['alpha_N']:.3f}, D_c = {k['D_c']:.3g}, α_D = {k['alpha_D']:.3f}; "
        f"RMS log residual {k['rms_log_residual']:.4f}.\n",
        "| held-out size | tokens D | predicted loss | measured loss | error | Kaplan form's error |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for h in held:
        lines.append(
            f"| L{h['n_layer']} C{h['n_embd']} (N = {h['N']:,}) | {h['D']:,} | {h['predicted']:.3f} | "
            f"{h['loss']:.3f} | {h['error']:+.3f} ({100 * h['relative_error']:+.1f}%) | "
            f"{100 * h['relative_error_kaplan']:+.1f}% |"
        )
    lines += [
        "",
        f"Largest error on the held-out size: {100 * worst:.1f}% (acceptance: within 5%); leaving each fitted "
        f"size out in turn and predicting it from the rest: at most {100 * loo:.1f}%.\n",
        f"![scaling]({result['figure']})\n",
    ]
    return "\n".join(lines)


def run(out_dir: str | Path, quick: bool = False, world: Path | None = None, tokenizer: Path | None = None,
        seed: int = 0, jobs: int = 1, sizes: list[tuple] | None = None, held_out: tuple | None = None,
        steps: tuple[int, ...] | None = None, batch: int = BATCH, block: int = BLOCK, starts: int = 64,
        ) -> dict[str, Any]:  # fmt: skip
    """Train the grid, fit, predict the held-out size, train it, and return numbers + figure + markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        sizes, held_out, steps = (
            sizes or QUICK["sizes"],
            held_out or QUICK["held_out"],
            steps or QUICK["steps"],
        )
        batch, block, starts = min(batch, 2), min(block, 32), min(starts, 8)
    sizes, held_out, steps = sizes or SIZES, held_out or HELD_OUT, steps or STEPS
    if world is None:
        from danlu.data.world import write_world

        world = out / "world"
        write_world(world, seed=seed, size="tiny" if quick else "small")
    if tokenizer is None:
        from danlu.data.formats import read_jsonl
        from danlu.tokenizers.bpe import BPETokenizer

        texts = [r["text"] for r in read_jsonl(Path(world) / "pretrain_train.jsonl", "pretrain")]
        tokenizer = out / "tokenizer"
        BPETokenizer.train(texts, vocab_size=512 if quick else 2048).save(tokenizer)
    common = dict(
        world=Path(world), tokenizer_dir=Path(tokenizer), out=out, seed=seed, batch=batch, block=block
    )
    common["eval_batches"] = 2 if quick else 20

    print(f"fitting {len(sizes)} sizes × {len(steps)} budgets, batch {batch} × block {block}", flush=True)
    rows = _train_all([(s, n) for s in sizes for n in steps], common, jobs)
    params = fit(rows, seed=seed, starts=starts)
    print("fit: " + ", ".join(f"{k}={v:.4g}" for k, v in params.items()))
    N_held = _held_out_params(held_out, Path(tokenizer), block)
    # the prediction is written down (to disk) before the held-out size is trained
    held = [{"steps": n, "N": N_held, "D": n * batch * block} for n in steps]
    for h in held:
        h["predicted"] = predict(params, h["N"], h["D"])
        print(f"  predicted before training: N={h['N']:,} D={h['D']:,}: {h['predicted']:.4f}")
    (out / "scaling_prediction.json").write_text(json.dumps({"fit": params, "held_out": held}, indent=1))
    for h, row in zip(held, _train_all([(held_out, n) for n in steps], common, jobs), strict=True):
        h.update(row)
    return analyse(out, rows, held, sizes, held_out, steps, seed, starts)


def analyse(out: Path, rows: list[dict], held: list[dict], sizes, held_out, steps, seed: int = 0,
            starts: int = 64) -> dict:  # fmt: skip
    """The fits, errors, leave-one-size-out check, figure and markdown of finished runs; writes scaling.json."""
    params = fit(rows, seed=seed, starts=starts)
    kaplan = fit_kaplan(rows, seed=seed, starts=max(1, starts // 2))
    for h in held:
        h["error"] = h["predicted"] - h["loss"]
        h["relative_error"] = h["error"] / h["loss"]
        h["predicted_kaplan"] = predict_kaplan(kaplan, h["N"], h["D"])
        h["relative_error_kaplan"] = (h["predicted_kaplan"] - h["loss"]) / h["loss"]
    result = {
        "sizes": [list(s) for s in sizes],
        "held_out_size": list(held_out),
        "steps": list(steps),
        "fit": params,
        "fit_kaplan": kaplan,
        "runs": rows,
        "held_out": held,
        "leave_one_size_out": leave_one_size_out(rows, seed=seed, starts=max(1, starts // 4)),
        "max_abs_relative_error": max(abs(h["relative_error"]) for h in held),
        "max_abs_relative_error_kaplan": max(abs(h["relative_error_kaplan"]) for h in held),
        "cpu_seconds": round(sum(r["cpu_seconds"] for r in rows + held), 1),
        "figure": str(out / "scaling.png"),
    }
    plot(rows, held, params, out / "scaling.png")
    result["markdown"] = markdown(result)
    (out / "scaling.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    print("\n" + result["markdown"])
    print(f"wrote {out / 'scaling.json'} and {out / 'scaling.png'}")
    return result


def refit(out_dir: str | Path, seed: int = 0) -> dict[str, Any]:
    """Re-analyse OUT/scaling.json's finished runs (new fits or report) without training anything; the
    additive form's held-out predictions are recomputed from the fitted runs alone, as before training."""
    out = Path(out_dir)
    old = json.loads((out / "scaling.json").read_text(encoding="utf-8"))
    params = fit(old["runs"], seed=seed)
    held = old["held_out"]
    for h in held:
        h["predicted"] = predict(params, h["N"], h["D"])
    return analyse(out, old["runs"], held, old["sizes"], old["held_out_size"], old["steps"], seed)


def _held_out_params(size: tuple[int, int, int], tokenizer_dir: Path, block: int) -> int:
    from danlu.models.gpt import GPT, GPTConfig
    from danlu.tokenizers.io import load_tokenizer

    n_layer, n_head, n_embd = size
    vocab = load_tokenizer(tokenizer_dir).vocab_size
    cfg = GPTConfig.from_name("llama-tiny", vocab_size=vocab, n_layer=n_layer, n_head=n_head, n_kv_head=n_head,
                              n_embd=n_embd, block_size=block)  # fmt: skip
    return _non_embedding_params(GPT(cfg))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", type=Path, help="a world folder (default: `danlu world` into OUT/world)")
    p.add_argument(
        "--tokenizer", type=Path, help="a tokenizer folder (default: a 2048-token BPE of the world)"
    )
    p.add_argument("--out", type=Path, default=Path("runs/scaling"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="runs trained at once, one CPU thread each")
    p.add_argument("--quick", action="store_true", help="a smoke run of tiny sizes and a few steps")
    p.add_argument("--refit", action="store_true", help="re-analyse OUT/scaling.json's runs, train nothing")
    p.add_argument("--one-run", help=argparse.SUPPRESS)  # internal: one run for _train_all, as JSON
    args = p.parse_args(argv)
    if args.one_run:
        import torch

        torch.set_num_threads(1)
        spec = json.loads(args.one_run)
        for k in ("world", "tokenizer_dir", "out"):
            spec[k] = Path(spec[k])
        spec["size"] = tuple(spec["size"])
        print(json.dumps(train_one(**spec)))
        return 0
    if args.refit:
        refit(args.out, seed=args.seed)
        return 0
    run(
        args.out, quick=args.quick, world=args.world, tokenizer=args.tokenizer, seed=args.seed, jobs=args.jobs
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
