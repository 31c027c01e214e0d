"""What the loop logs: figures summed on the device between log steps (no host sync), and OUT/metrics.jsonl.

A step's loss and gradient norm are tensors on the device; reading one (`.item()`, `float()`) makes the host
wait for the device to finish, so the loop adds them into `Meter`'s sums and reads the sums only at a log
step (`log_interval`, an evaluation, a checkpoint, the end): one wait per log instead of two per step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from danlu.fileio import atomic_write_text


def wide(t: torch.Tensor) -> torch.Tensor:
    """`t` detached, in float64 for summing (as Python sums floats); MPS has no float64: float32 there."""
    return t.detach().float() if t.device.type == "mps" else t.detach().double()


class Meter:
    """Running sums of a window of steps' figures; tensors stay on their device until `means()`."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def add(self, figures: dict[str, Any]) -> None:
        for k, v in figures.items():
            if isinstance(v, torch.Tensor):
                v = wide(v)
            self.sums[k] = v if k not in self.sums else self.sums[k] + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self, reduce: Any = None) -> dict[str, float]:
        """The window's means as floats (the one host sync), then a fresh window. `reduce(t)` averages a
        tensor over processes first (DDP)."""
        out = {}
        for k, v in self.sums.items():
            if isinstance(v, torch.Tensor):
                v = (reduce(v) if reduce is not None else v).item()
            out[k] = float(v) / self.counts[k]
        self.sums, self.counts = {}, {}
        return out

    def __bool__(self) -> bool:
        return bool(self.sums)


class MetricsLog:
    """One JSON record per line in OUT/metrics.jsonl. On resume at `start_step` the records past it are
    dropped, so the log reads as one uninterrupted run; a fresh run (step 0) starts an empty file."""

    def __init__(self, out_dir: str | Path, start_step: int, enabled: bool = True) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _truncate(self.path, start_step)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (a folder: its metrics.jsonl); [] when there is none."""
    path = Path(path)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate(path: Path, step: int) -> None:
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))
