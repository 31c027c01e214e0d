"""`TrainConfig`: every knob of the training loop, checked on construction.

Its own module, free of torch, so the CLI can build its flags from the fields without importing PyTorch
(`danlu --help` stays fast); `danlu.train.loop` re-exports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from danlu.errors import DanluError


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 32  # sequences per micro-batch, summed over all processes
    grad_accum: int = 1  # micro-batches per optimizer step
    block_size: int = 128  # tokens per training sequence
    lr: float = 1e-3
    min_lr: float | None = None  # None: lr / 10
    warmup_steps: int = 50
    decay: str = "cosine"  # "cosine" | "linear" | "constant"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    eval_interval: int = 100
    eval_batches: int = 10
    ckpt_interval: int = 0  # 0: only at the end (and at every eval when > 0)
    seed: int = 1337
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N" | "mps"
    dtype: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 elsewhere) | "float32" | "bfloat16"
    compile: bool = False
    # "auto": DDP under torchrun, one process otherwise | "single" | "ddp" | "fsdp" (danlu.train.distributed)
    strategy: str = "auto"
    gradient_checkpointing: bool = False  # recompute each block's activations in backward (danlu.train.plan)
    show_progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            (
                self.min_lr is None or 0 <= self.min_lr <= self.lr,
                f"min_lr must be in [0, lr], got {self.min_lr}",
            ),
            (self.max_steps > 0, f"max_steps must be positive, got {self.max_steps}"),
            (self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}"),
            (self.grad_accum > 0, f"grad_accum must be positive, got {self.grad_accum}"),
            (self.block_size > 1, f"block_size must be at least 2, got {self.block_size}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (
                self.decay in ("cosine", "linear", "constant"),
                f"decay must be cosine|linear|constant: {self.decay!r}",
            ),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}"),
            (
                self.dtype in ("auto", "float32", "bfloat16"),
                f"dtype must be auto|float32|bfloat16: {self.dtype!r}",
            ),
            (
                self.strategy in ("auto", "single", "ddp", "fsdp"),
                f"strategy must be auto|single|ddp|fsdp: {self.strategy!r}",
            ),
        ]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise DanluError("bad training config: " + "; ".join(bad))
        if self.min_lr is None:
            self.min_lr = self.lr / 10

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
