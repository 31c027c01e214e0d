"""What the online (sample-then-learn) trainers, PPO and GRPO, share on top of the one training loop
(danlu.train.loop): which prompts a step uses, and an `Objective` that measures the starting policy and draws
its own curves. The loop owns the optimizer, the schedule, logging, checkpoints and plots; a trainer gives
its experience (rollouts, rewards, advantages) as the step's updates and the loss of one of them.

A step's batches depend on the current policy (they are sampled from it), not only on the step, so the loop's
offline `batch_fn(split, step, micro)` contract becomes `Objective.work(step)`; the rollouts are still a pure
function of (seed, step) and the weights, drawn with their own seeded generators.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from danlu.train.loop import Objective


def step_indices(n: int, B: int, seed: int, step: int) -> list[int]:
    """B item indices for `step`, walking a fresh permutation of the n items per epoch (as SFT does)."""
    from danlu.tune.sft import epoch_batch_indices

    return epoch_batch_indices(n, B, seed, step, 0, 1)


class OnlineObjective(Objective):
    """An online trainer's objective: evaluates the policy before the first step (step 0) and plots
    `curves` (one panel per logged key) to OUT/`curves_png` instead of a loss curve."""

    eval_before_training = True
    curves: tuple[str, ...] = ()
    curves_png = "curves.png"
    curves_title = ""
    hlines: dict[str, float] | None = None

    def plot(self, records: list[dict[str, Any]], out_dir: Path) -> None:
        from danlu.train.plots import plot_curves

        plot_curves(records, list(self.curves), out_dir / self.curves_png, self.curves_title, self.hlines)
