"""The two pretraining schedules of `danlu demo`: the default group's and the alignment stages' base.

They differ on purpose (issue 21 item 8; experiments/README.md, "What the base model knows", has the table):
the default group must finish within 3 minutes on 2 CPU cores, while the alignment stages stand on a model
whose facts and sums are memorised, and other experiments (PPO, GRPO) are measured on exactly that base.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class PretrainSchedule:
    """Steps, peak learning rate and where the cosine decay ends (a fraction of the peak)."""

    steps: int
    lr: float
    final_lr_ratio: float


# Default group: 480 steps at a constant 4e-3 after the warmup (final_lr_ratio 1: the cosine from 4e-3 to
# 4e-3). This regime memorises facts at the rate the learning rate allows and the low-lr end of a decay buys
# little: 420 steps decaying 4e-3 → 4e-5 completed 0.555 of the held-in facts, 4e-3 kept for 480 steps 0.815
# (today's 600 steps at 2e-3 → 2e-4: 0.835, over 3 minutes). experiments/README.md, "What the base model knows".
PRETRAIN_DEFAULT = PretrainSchedule(steps=480, lr=4e-3, final_lr_ratio=1.0)
# The alignment stages' base (sft, reward, dpo, ppo, grpo, lab): GRPO's arithmetic gain needs ~1000 steps to
# reach 0.1. Kept exactly as the PPO/GRPO experiments measured it: change it only with them.
PRETRAIN_ALIGN = PretrainSchedule(steps=1000, lr=2e-3, final_lr_ratio=0.1)


def resolve_pretrain_flags(args: argparse.Namespace, schedule: PretrainSchedule) -> None:
    """Fill --pretrain-steps, --lr and --min-lr the user left out from `schedule` (before the run's settings
    are saved or compared, so `--resume` sees the values the run used)."""
    if args.steps is None:
        args.steps = schedule.steps
    if getattr(args, "lr", None) is None:
        args.lr = schedule.lr
    if getattr(args, "min_lr", None) is None:
        args.min_lr = args.lr * schedule.final_lr_ratio
