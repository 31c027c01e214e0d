"""Training plots, read back from metrics.jsonl and drawn by the one plotting module (danlu/plots.py): the loss
curve of the offline stages and the online trainers' reward/KL panels."""

from __future__ import annotations

from pathlib import Path

from danlu.plots import plot_loss_curve as plot_loss_curve  # re-exported for train.loop
from danlu.plots import plot_panels


def plot_curves(
    records: list[dict], keys: list[str], png: str | Path, title: str, hlines: dict[str, float] | None = None
) -> Path:
    """One panel per key of the metrics records (its value against the step), with optional horizontal bound
    lines per key (the online trainers' reward and KL curves)."""
    series = {key: [(r["step"], r[key]) for r in records if key in r] for key in keys}
    return plot_panels(series, png, title, hlines)
