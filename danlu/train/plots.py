"""Training plots: the loss curve, read back from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path, title: str = "loss") -> Path:
    """Train loss per step and validation loss per evaluation on one log-scaled axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = [], []
    for line in Path(metrics_path).read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            train.append((r["step"], r["loss"]))
        if "val_loss" in r:
            val.append((r["step"], r["val_loss"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return Path(png_path)


def plot_curves(
    records: list[dict], keys: list[str], png: str | Path, title: str, hlines: dict[str, float] | None = None
) -> Path:
    """One panel per key of the metrics records (its value against the step), with optional horizontal bound
    lines per key (the online trainers' reward and KL curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["step"], r[key]) for r in records if key in r]
        if pts:
            ax.plot(*zip(*pts), "o-", markersize=2.5, linewidth=1)
        if hlines and key in hlines:
            ax.axhline(hlines[key], color="red", linestyle="--", linewidth=1, label=f"bound {hlines[key]:g}")
            ax.legend()
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Path(png)
