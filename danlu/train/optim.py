"""The loop's optimizer: AdamW over decay / no-decay parameter groups, each group with its own peak learning
rate on the one schedule (danlu.train.schedule), and gradient clipping per group of parameters."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from danlu.errors import DanluError
from danlu.train.schedule import lr_at


def param_groups(
    model: nn.Module, weight_decay: float, lr: float | None = None, min_lr: float | None = None
) -> list[dict[str, Any]]:
    """Decay matrices only: norms' gains, biases and (1-D) other vectors are not regularised toward zero.
    `lr` / `min_lr`, when given, are the groups' own peak and floor (the loop's schedule reads them)."""
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    peak = {} if lr is None else {"peak_lr": lr, "min_lr": min_lr if min_lr is not None else lr / 10}
    return [
        {"params": decay, "weight_decay": weight_decay, **peak},
        {"params": no_decay, "weight_decay": 0.0, **peak},
    ]


def build_optimizer(groups: list[dict[str, Any]], cfg: Any, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over `groups`; a group without its own "peak_lr" follows cfg.lr (and cfg.min_lr)."""
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise DanluError("the model has no trainable parameters (requires_grad is False everywhere)")
    for g in groups:
        g.setdefault("peak_lr", cfg.lr)
        g.setdefault("min_lr", cfg.min_lr)
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        fused=device.type == "cuda",  # one kernel for all parameters on GPU
    )


def set_lr(optimizer: torch.optim.Optimizer, step: int, cfg: Any) -> float:
    """Every group's learning rate for optimizer step `step` (0-based): warmup, then cfg.decay from the
    group's peak to its floor; returns the first group's (the one a log shows)."""
    lrs = []
    for group in optimizer.param_groups:
        group["lr"] = lr_at(
            step, group["peak_lr"], cfg.warmup_steps, cfg.max_steps, group["min_lr"], cfg.decay
        )
        lrs.append(group["lr"])
    return lrs[0]


def clip_gradients(clip_groups: dict[str, list[nn.Parameter]], max_norm: float) -> dict[str, torch.Tensor]:
    """Clip each group's global gradient norm to `max_norm` (0: measure only); the norms stay on the device
    (reading them would wait for it: the loop reads them at log steps)."""
    limit = max_norm or float("inf")
    norms = {name: torch.nn.utils.clip_grad_norm_(params, limit) for name, params in clip_groups.items()}
    # FSDP2's norm is a DTensor: its full value (a collective every rank joins, not a host sync)
    return {name: n.full_tensor() if hasattr(n, "full_tensor") else n for name, n in norms.items()}
