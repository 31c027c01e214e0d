"""Plumbing shared by the online (sample-then-learn) trainers, PPO and GRPO: which prompts a step uses, the
optimizer, a metrics log and its curves. The offline stages (SFT, reward model, DPO) use danlu.train.loop.

Online RL cannot use the one training loop's `batch_fn(split, step, micro)` contract: a batch depends on the
current policy (it is sampled from it), not only on the step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.errors import DanluError


def step_indices(n: int, B: int, seed: int, step: int) -> list[int]:
    """B item indices for `step`, walking a fresh permutation of the n items per epoch (as SFT does)."""
    from danlu.tune.sft import epoch_batch_indices

    return epoch_batch_indices(n, B, seed, step, 0, 1)


def adamw(params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (β2 = 0.95 as in pretraining: steadier with noisy RL gradients)."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise DanluError("the model has no trainable parameters (requires_grad is False everywhere)")
    return torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)


def set_lr(
    optimizer: torch.optim.Optimizer, peak: float, step: int, steps: int, decay: str = "cosine"
) -> float:
    """Linear warmup over the first 5% of steps, then `decay` ("cosine" | "linear" | "constant") to peak/10
    (danlu.train.schedule): with a decay the policy settles at the end of an online run instead of drifting
    with the last noisy updates."""
    from danlu.train.schedule import lr_at

    lr = lr_at(step, peak, max(1, steps // 20), steps, peak / 10, decay)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


class MetricsLog:
    """Appends one JSON record per line to OUT/metrics.jsonl (fresh at the start of a run)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self.t0 = time.perf_counter()
        self.records: list[dict[str, Any]] = []

    def log(self, record: dict[str, Any]) -> dict[str, Any]:
        record = {**record, "elapsed_s": round(time.perf_counter() - self.t0, 2)}
        clean = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}
        self.records.append(clean)
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
        return clean

    def series(self, key: str) -> list[tuple[int, float]]:
        return [(r["step"], r[key]) for r in self.records if key in r]


def plot_curves(log: MetricsLog, keys: list[str], png: str | Path, title: str,
                hlines: dict[str, float] | None = None) -> Path:  # fmt: skip
    """One panel per key (its value against the step), with optional horizontal bound lines per key."""
    from danlu.plots import plot_panels

    return plot_panels({key: log.series(key) for key in keys}, png, title, hlines)


def resolve_device(name: str) -> torch.device:
    from danlu.train.loop import resolve_device as _resolve

    return _resolve(name)
