"""The over-optimisation experiment's summary, figure and report section (experiments/overopt.py runs it)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def summarise(curves: dict[str, list[dict]], bon: list[dict], proxy_acc: float) -> dict[str, Any]:
    """Per method: gold at the start, its maximum (the peak: step, KL per answer and per token), the end."""
    per: dict[str, Any] = {}
    for method, curve in curves.items():
        peak = max(curve, key=lambda c: c["gold"])
        first, last = curve[0], curve[-1]
        per[method] = {
            "gold_sft": first["gold"], "gold_peak": peak["gold"], "peak_step": peak["step"],
            "peak_kl": peak["kl"], "peak_kl_per_token": peak["kl_per_token"], "gold_final": last["gold"],
            "proxy_final": last["proxy"], "kl_final": last["kl"], "kl_per_token_final": last["kl_per_token"],
            # a peak: gold rose above the start and then fell back by more than two standard errors
            "peak_visible": peak is not first and peak is not last
            and peak["gold"] - last["gold"] > 2 * math.hypot(peak["gold_se"], last["gold_se"]),
        }  # fmt: skip
    best = max(bon, key=lambda b: b["gold"])
    gold_sft = next(iter(curves.values()))[0]["gold"] if curves else float("nan")
    return {"proxy_heldout_pairwise_accuracy": proxy_acc, "gold_sft": gold_sft, "methods": per,
            "best_of_n_peak": best, "peak_visible_for": [m for m, v in per.items() if v["peak_visible"]]}  # fmt: skip


def plot(curves: dict[str, list[dict]], bon: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "proxy", "proxy reward (the RM optimised)"),
                           (axes[1], "gold", "gold reward (the world's checker: share right)")):  # fmt: skip
        for i, (method, curve) in enumerate(curves.items()):
            x = [math.sqrt(max(c["kl"], 0.0)) for c in curve]
            ax.plot(x, [c[key] for c in curve], "o-", color=f"C{i}", label=method.upper(), ms=4)
            if key == "gold":
                peak = max(range(len(curve)), key=lambda j: curve[j]["gold"])
                ax.plot(x[peak], curve[peak]["gold"], "*", color=f"C{i}", ms=14, mec="black")
        ax.plot([math.sqrt(b["kl"]) for b in bon], [b[key] for b in bon], "s--", color="black", ms=3,
                label=f"best-of-n (n = 1 … {bon[-1]['n']})")  # fmt: skip
        ax.set_xlabel("sqrt KL(π ‖ π_ref), nats per answer")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("Reward over-optimisation on danlu's world (Gao et al. 2022); ★ gold's maximum", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown(result: dict[str, Any], figure_link: str) -> str:
    n, s = result["numbers"], result["settings"]
    rows = "".join(
        f"| {m.upper()} | {v['gold_sft']:.3f} | **{v['gold_peak']:.3f}** | {v['peak_step']} | {v['peak_kl']:.2f} "
        f"({v['peak_kl_per_token']:.3f}) | {v['gold_final']:.3f} | {v['proxy_final']:.3f} | {v['kl_final']:.2f} | "
        f"{'yes' if v['peak_visible'] else 'no'} |\n"
        for m, v in n["methods"].items()
    )
    b = n["best_of_n_peak"]
    return (
        "## Reward over-optimisation (Gao et al. 2022)\n\n"
        f"A proxy reward model ({s['rm_steps']} steps on {s['rm_pairs']} preference pairs; held-out pairwise "
        f"accuracy {n['proxy_heldout_pairwise_accuracy']:.3f}) optimised by PPO, GRPO and DPO from the same SFT "
        f"model at equal compute ({s['steps']} updates of {s['samples']} sampled answers each); measured on "
        f"{s['eval_prompts']} held-out prompts × {s['eval_samples']} answers: KL to the SFT model, proxy score, "
        "gold reward (the world's checker).\n\n"
        "| method | gold (SFT) | gold peak | at step | KL at peak, nats/answer (/token) | gold at end | proxy at end "
        "| KL at end | peak then fall |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n"
        + rows
        + f"| best-of-n | {n['gold_sft']:.3f} | **{b['gold']:.3f}** | n = {b['n']} | {b['kl']:.2f} | | | | |\n\n"
        f"{result['seconds']:.0f} s wall, {result['cpu_seconds']:.0f} CPU-s.\n\n![over-optimisation]({figure_link})\n"
    )
