"""The one plotting module: every PNG danlu writes (training curves, RL curves, the demo's stage chart,
evaluation plots) is drawn here.

A ground module like `danlu.fileio` (it imports only that): any stage may use it. Plots use matplotlib's
object-oriented API on an Agg canvas (no pyplot, no display, no global backend switch), so they work on a
headless machine and never disturb a notebook's backend; files are written atomically (`save_figure`).
matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from danlu.fileio import atomic_path

Series = Sequence[tuple[float, float]]  # (step, value) points


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on its own Agg canvas (no pyplot state, no backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write the figure as a PNG, atomically (an interrupted run never leaves half a picture)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return Path(path)


def plot_confusion_matrix(
    matrix: np.ndarray, labels: Sequence[Any], path: str | Path, title: str = "Confusion matrix"
) -> Path:
    """Heatmap of counts (rows = true class, columns = predicted), each cell annotated with its count.

    The colour is the row-normalised share (the per-class recall on the diagonal), so a rare class's errors
    are as visible as a frequent one's; the number printed is the raw count.
    """
    matrix = np.asarray(matrix)
    K = len(labels)
    support = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, support, out=np.zeros(matrix.shape), where=support > 0)  # (K, K) row-normalised
    size = min(2.0 + 0.6 * K, 30.0)
    fig = new_figure(size + 1.5, size)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    names = [str(label) for label in labels]
    ax.set_xticks(range(K), names, rotation=45 if K > 4 else 0, ha="right" if K > 4 else "center")
    ax.set_yticks(range(K), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if K <= 40:  # beyond that the numbers would not be readable anyway
        for i in range(K):
            for j in range(K):
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")  # fmt: skip
    return save_figure(fig, path)


# Curves that coincide (two perfect classes: precision 1 at every recall) must all stay visible: each curve gets
# its own colour, dash pattern and marker, and curves drawn earlier are wider, so one drawn on top of another
# leaves the earlier one's edges showing (the nested-line idiom).
_STYLES = ["-", "--", "-.", ":"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def pr_curves_figure(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], title: str = "Precision-recall"
) -> Any:
    """The PR-curve figure of `plot_pr_curves` (not saved)."""
    fig = new_figure(6.5, 5.0)
    ax = fig.add_subplot()
    n = len(curves)
    for i, (name, (recall, precision, ap)) in enumerate(curves.items()):
        recall, precision = np.asarray(recall), np.asarray(precision)
        if len(recall) > 1 and recall[0] > recall[-1]:  # scikit-learn's order (recall falling): turn it round
            recall, precision = recall[::-1], precision[::-1]
        # "pre": precision P_n holds on the recall interval (R_{n-1}, R_n], the area the step-wise AP sums
        ax.step(
            recall,
            precision,
            where="pre",
            label=f"{name} (AP = {ap:.3f})",
            color=f"C{i % 10}",
            linestyle=_STYLES[i % len(_STYLES)],
            linewidth=1.2 + 2.0 * (n - 1 - i) / max(n - 1, 1),  # first curve widest, last 1.2
            marker=_MARKERS[i % len(_MARKERS)],
            markevery=max(1, len(recall) // 8),
            markersize=4,
            alpha=0.9,
        )
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    if curves:
        ax.legend(loc="lower left", fontsize=8)
    return fig


def plot_pr_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
    path: str | Path,
    title: str = "Precision-recall",
) -> Path:
    """One PR curve per entry {name: (recall, precision, ap)}, the AP shown in the legend; curves that coincide
    all stay visible (see _STYLES).

    Points may come in either recall order (rising, as COCO's, or falling, as `precision_recall_curve`'s).
    """
    return save_figure(pr_curves_figure(curves, title), path)


def plot_histogram(values: Sequence[float], path: str | Path, title: str, xlabel: str) -> Path:
    """A histogram, e.g. of sentence-level BLEU."""
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    ax.hist(np.asarray(values, dtype=np.float64), bins=20)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    return save_figure(fig, path)


def bars_figure(
    values: Mapping[str, float], title: str, ylabel: str, ylim: tuple[float, float] | None = None
) -> Any:
    """The bar-chart figure of `plot_bars` (not saved). ylim fixes the value axis (e.g. (0, 1) for a rate: with
    every value 0 matplotlib would otherwise centre a ±0.04 axis on nothing)."""
    names = [str(n) for n in values]
    longest = max((len(n) for n in names), default=1)
    slanted = (
        len(names) > 3 or longest > 8
    )  # long or many names: slanted, anchored at the tick, never overlapping
    fig = new_figure(max(4.5, 1.5 + (0.8 if slanted else 0.1 * longest + 0.6) * len(names)), 4.0)
    ax = fig.add_subplot()
    bars = ax.bar(range(len(names)), [values[n] for n in values])
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    if slanted:
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticks(range(len(names)), names)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title, pad=14)  # room for the value label of a bar that reaches the top of a fixed axis
    return fig


def plot_bars(
    values: Mapping[str, float],
    path: str | Path,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """A bar chart of named values, each bar labelled with its value."""
    return save_figure(bars_figure(values, title, ylabel, ylim), path)


# ------------------------------------------------------------------------------------------- training curves
def plot_loss_curve(metrics_path: str | Path, png_path: str | Path, title: str = "loss") -> Path:
    """Train loss per step and validation loss per evaluation (read back from metrics.jsonl) on one
    log-scaled axis."""
    train, val = [], []
    for line in Path(metrics_path).read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            train.append((r["step"], r["loss"]))
        if "val_loss" in r:
            val.append((r["step"], r["val_loss"]))
    fig = new_figure(6, 4)
    ax = fig.add_subplot()
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
    return save_figure(fig, png_path)


def plot_panels(
    series: Mapping[str, Series], png: str | Path, title: str, hlines: Mapping[str, float] | None = None
) -> Path:
    """One panel per named series (its value against the step), with an optional horizontal bound per name."""
    keys = list(series)
    fig = new_figure(4.2 * len(keys), 3.4)
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys):
        if series[key]:
            ax.plot(*zip(*series[key]), "o-", markersize=2.5, linewidth=1)
        if hlines and key in hlines:
            ax.axhline(hlines[key], color="red", linestyle="--", linewidth=1, label=f"bound {hlines[key]:g}")
            ax.legend()
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, png)


def plot_grouped_bars(
    rows: Mapping[str, Mapping[str, float]], groups: Sequence[str], png: str | Path, ylabel: str
) -> Path:
    """One bar per (row, group), grouped by `groups` on the x axis; a value axis from 0 to 1 (rates)."""
    fig = new_figure(7.5, 3.6)
    ax = fig.add_subplot()
    width = 0.8 / max(len(rows), 1)
    for i, (name, values) in enumerate(rows.items()):
        xs = [k + i * width for k in range(len(groups))]
        ax.bar(xs, [values.get(g, 0.0) for g in groups], width, label=name)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(groups))], list(groups))
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, png)
