"""Learning-rate schedules: linear warmup, then cosine or linear decay to a floor.

Warmup (notes 003 §BERT pretraining: "learning rate warmup over the first steps, then linear decay") keeps the
first updates small while Adam's second-moment estimates are still noisy; decay anneals toward a minimum.
"""

from __future__ import annotations

import math


def lr_at(
    step: int, lr: float, warmup_steps: int, max_steps: int, min_lr: float, decay: str = "cosine"
) -> float:
    """The learning rate for optimizer step `step` (0-based).

    warmup: lr·(step+1)/warmup_steps; then with progress p = (step − warmup) / (max_steps − warmup) in [0, 1]:
    cosine: min_lr + ½(1 + cos πp)(lr − min_lr); linear: lr − p(lr − min_lr); constant: lr.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay == "constant" or max_steps <= warmup_steps:
        return lr
    p = min(1.0, (step - warmup_steps) / (max_steps - warmup_steps))
    if decay == "cosine":
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * p)) * (lr - min_lr)
    if decay == "linear":
        return lr - p * (lr - min_lr)
    raise ValueError(f"unknown decay {decay!r}")
