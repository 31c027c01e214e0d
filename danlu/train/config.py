"""The configs of the one training loop: `LoopConfig` (what every trainer shares: steps, schedule, optimizer,
clipping, logging, evaluation, checkpoints, seed, device) and `TrainConfig` (the offline stages' batches of
tokens). The online RL configs (danlu.align.configs) extend `LoopConfig` too, so a flag such as `--lr` or
`--log-interval` means one thing and is declared once, here, as field metadata (danlu.flags).

Its own module, free of torch, so the CLI can build its flags from the fields without importing PyTorch
(`danlu --help` stays fast); `danlu.train.loop` re-exports both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from danlu.errors import DanluError
from danlu.flags import option

DECAYS = ("cosine", "linear", "constant")


def default(cls: type, name: str, value: Any) -> Any:
    """Field `name` of dataclass `cls` with another default, its help and range kept (a subclass's default)."""
    return field(default=value, metadata=cls.__dataclass_fields__[name].metadata)


@dataclass
class LoopConfig:
    max_steps: int = option(1000, "most steps (optimizer steps, rounds, agent turns) to run")
    lr: float = option(1e-3, "peak learning rate (AdamW)")
    min_lr: float | None = option(None, "learning rate at the end of the decay; none = lr / 10")
    # None: 5% of max_steps (at least 1), the online trainers' default
    warmup_steps: int | None = option(None, "steps of linear warmup from 0 to lr; none = 5%% of max-steps")
    decay: str = option("cosine", "learning-rate schedule after the warmup", choices=DECAYS)
    weight_decay: float = option(0.1, "AdamW weight decay (not on norms, biases, embeddings)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the global gradient norm to this; 0 = off")
    eval_interval: int = option(100, "evaluate (and plot) every N steps")
    # Why not every step: reading the loss (`.item()`) waits for the device; between log steps the loss and
    # the gradient norm are summed on the device and the step's host work overlaps the device's.
    log_interval: int = option(10, "log the mean loss and gradient norm every N steps (a host sync each)")
    ckpt_interval: int = option(0, "save a checkpoint every N steps; 0 = at the end and at every evaluation")
    seed: int = option(1337, "random seed (batches are a pure function of seed and step)")
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N" | "mps" (its flag comes from danlu.flags.heavy)
    dtype: str = option(
        "auto", "auto = bf16 autocast on CUDA, fp32 elsewhere", choices=("auto", "float32", "bfloat16")
    )
    compile: bool = option(False, "torch.compile the model (the first steps wait for the compiler)")
    show_progress: bool = option(True, cli=False)

    def problems(self) -> list[str]:
        """What is wrong with this config, one phrase per field (subclasses add theirs)."""
        checks = [
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            (
                self.min_lr is None or 0 <= self.min_lr <= self.lr,
                f"min_lr must be in [0, lr], got {self.min_lr}",
            ),
            (self.max_steps > 0, f"max_steps must be positive, got {self.max_steps}"),
            (
                self.warmup_steps is None or self.warmup_steps >= 0,
                f"warmup_steps must be >= 0, got {self.warmup_steps}",
            ),
            (self.decay in DECAYS, f"decay must be cosine|linear|constant: {self.decay!r}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}"),
            (self.log_interval > 0, f"log_interval must be positive, got {self.log_interval}"),
            (
                self.dtype in ("auto", "float32", "bfloat16"),
                f"dtype must be auto|float32|bfloat16: {self.dtype!r}",
            ),
        ]
        return [msg for ok, msg in checks if not ok]

    def __post_init__(self) -> None:
        bad = self.problems()
        if bad:
            raise DanluError(f"bad {self.what} config: " + "; ".join(bad))
        if self.min_lr is None:
            self.min_lr = self.lr / 10
        if self.warmup_steps is None:
            self.warmup_steps = max(1, self.max_steps // 20)

    what = "training"  # how an error names the config

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainConfig(LoopConfig):
    """The offline stages (pretraining, SFT, reward model, DPO, ...): batches of `batch_size` sequences of
    `block_size` tokens, `grad_accum` micro-batches per optimizer step."""

    warmup_steps: int = option(50, "steps of linear warmup from 0 to lr")  # a number: no 5% rule here
    batch_size: int = option(32, "sequences per micro-batch, summed over all processes")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    block_size: int = option(128, "tokens per training sequence")
    eval_batches: int = option(10, "validation batches per evaluation")
    # "auto": DDP under torchrun, one process otherwise (danlu.train.distributed; FSDP2 in danlu.train.fsdp)
    strategy: str = option(
        "auto",
        "auto = DDP under torchrun, else one process; fsdp shards weights, gradients and optimizer state "
        "across the torchrun processes (FSDP2)",
        choices=("auto", "single", "ddp", "fsdp"),
    )
    gradient_checkpointing: bool = option(
        False, "recompute each block's activations in the backward pass: less memory, about 1/3 more compute"
    )

    def problems(self) -> list[str]:
        checks = [
            (
                self.strategy in ("auto", "single", "ddp", "fsdp"),
                f"strategy must be auto|single|ddp|fsdp: {self.strategy!r}",
            ),
            (self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}"),
            (self.grad_accum > 0, f"grad_accum must be positive, got {self.grad_accum}"),
            (self.block_size > 1, f"block_size must be at least 2, got {self.block_size}"),
        ]
        return super().problems() + [msg for ok, msg in checks if not ok]
