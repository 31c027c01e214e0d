"""Writing evaluation results: `eval.json` and PNG plots (confusion-matrix heatmap, PR curves, histograms).

Plots use matplotlib's object-oriented API on an Agg canvas (no pyplot, no display, no global backend
switch), so they work on a headless machine and never disturb a notebook's backend. Files are written to a
temporary name and renamed, so an interrupted run never leaves half a file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _jsonable(obj: Any) -> Any:
    """numpy scalars/arrays -> Python; NaN and infinity -> None (JSON has no NaN); keys -> str."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _atomic_write(path: Path, write: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_json(obj: Any, path: str | Path) -> Path:
    """Write `obj` as indented UTF-8 JSON (NaN becomes null), atomically."""
    text = json.dumps(_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return _atomic_write(Path(path), lambda p: p.write_text(text, encoding="utf-8"))


def write_jsonl(rows: Sequence[Any], path: str | Path) -> Path:
    """Write one JSON object per line (UTF-8, Chinese kept readable), atomically."""
    text = "".join(json.dumps(_jsonable(row), ensure_ascii=False, allow_nan=False) + "\n" for row in rows)
    return _atomic_write(Path(path), lambda p: p.write_text(text, encoding="utf-8"))


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    return _atomic_write(Path(path), lambda p: fig.savefig(p, format="png", bbox_inches="tight"))


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
    fig = _new_figure(size + 1.5, size)
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
    return _save(fig, path)


# Curves that coincide (two perfect classes: precision 1 at every recall) must all stay visible: each curve gets
# its own colour, dash pattern and marker, and curves drawn earlier are wider, so one drawn on top of another
# leaves the earlier one's edges showing (the nested-line idiom).
_STYLES = ["-", "--", "-.", ":"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def pr_curves_figure(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], title: str = "Precision-recall"
) -> Any:
    """The PR-curve figure of `plot_pr_curves` (not saved)."""
    fig = _new_figure(6.5, 5.0)
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
    return _save(pr_curves_figure(curves, title), path)


def plot_histogram(values: Sequence[float], path: str | Path, title: str, xlabel: str) -> Path:
    """A histogram, e.g. of sentence-level BLEU."""
    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    ax.hist(np.asarray(values, dtype=np.float64), bins=20)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    return _save(fig, path)


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
    fig = _new_figure(max(4.5, 1.5 + (0.8 if slanted else 0.1 * longest + 0.6) * len(names)), 4.0)
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
    return _save(bars_figure(values, title, ylabel, ylim), path)
