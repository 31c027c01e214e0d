"""How the one training loop places a model on devices and processes, and how it saves and restores a run.

The seam for distribution strategies: `setup_device` picks the device (and starts the process group under
`torchrun`), `wrap_model` wraps the model for the strategy (today torch.compile and DDP; FSDP plugs in here),
`save_training_state` / `restore_training_state` write and read the checkpoint a resume starts from (a
sharded strategy saves and loads its shards here). The loop calls nothing else of the strategy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.errors import DanluError
from danlu.train.checkpoint import find_checkpoint, save_checkpoint


class DistInfo:
    """rank / world size from torchrun's environment; a single process when it is absent."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DanluError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    return torch.device(name)


def setup_device(name: str, dist: DistInfo) -> torch.device:
    """The device of this process; under torchrun one GPU per local rank and the process group started."""
    device = resolve_device(name)
    if dist.enabled:
        import torch.distributed as tdist

        if device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(device)
        if not tdist.is_initialized():
            tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def wrap_model(model: nn.Module, cfg: Any, dist: DistInfo, device: torch.device) -> nn.Module:
    """The module the loop runs forward and backward through: `model` itself (sharded in place under
    `--strategy fsdp`, its blocks recomputed under `--gradient-checkpointing`), compiled, and/or DDP-wrapped.
    `model` keeps the weights the loop clips, evaluates and saves. Called before the optimizer is built:
    FSDP2 replaces the parameters with sharded ones (danlu.train.distributed explains the strategies)."""
    from danlu.train.distributed import enable_gradient_checkpointing, resolve_strategy, wrap_ddp

    strategy = resolve_strategy(getattr(cfg, "strategy", "auto"), dist.world_size)
    if getattr(cfg, "gradient_checkpointing", False):
        enable_gradient_checkpointing(model)
    if strategy == "fsdp":
        from danlu.train.fsdp import shard_model

        shard_model(model, device)
    train_model: nn.Module = model
    if getattr(cfg, "compile", False):
        train_model = torch.compile(model)
    if strategy == "ddp":
        train_model = wrap_ddp(train_model, device)
    return train_model


def _sharded(model: nn.Module) -> bool:
    """Whether `model` was fully_shard-ed (FSDP2 modules carry the gradient-sync switch)."""
    return hasattr(model, "set_requires_gradient_sync")


def no_sync(train_model: nn.Module, dist: DistInfo, last_micro: bool) -> Any:
    """Only the last micro-batch of an update averages the gradients across processes: DDP skips its
    all-reduce, FSDP2 keeps unsharded gradients and reduce-scatters them at the last one."""
    from contextlib import nullcontext

    if _sharded(train_model):
        train_model.set_requires_gradient_sync(last_micro)
        return nullcontext()
    return train_model.no_sync() if dist.enabled and not last_micro else nullcontext()


def mean_over_ranks(x: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    if not dist.enabled:
        return x
    import torch.distributed as tdist

    x = x.detach().clone()
    tdist.all_reduce(x, op=tdist.ReduceOp.SUM)
    return x / dist.world_size


def save_training_state(
    out_dir: Path,
    model: nn.Module,
    save_fn: Callable[[nn.Module, Path], None],
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    cfg: Any,
    dist: DistInfo,
    device: torch.device,
) -> Path | None:
    """Write the checkpoint of step `state["step"]`: the model files `save_fn` writes, optimizer.pt (optimizer
    and RNG state) and trainer_state.json, published atomically (train/checkpoint.py) by the main process.
    A sharded model: every rank writes its shards beside the consolidated model (danlu.train.fsdp)."""
    if not dist.is_main and not _sharded(model):
        return None
    state = {**state, "train_config": asdict(cfg), "world_size": dist.world_size}
    extra = {"rng_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        extra["rng_cuda"] = torch.cuda.get_rng_state(device)
    if _sharded(model):
        from danlu.train.fsdp import save_sharded_checkpoint

        return save_sharded_checkpoint(out_dir, model, optimizer, save_fn, extra, state)
    extra["optimizer"] = optimizer.state_dict()
    return save_checkpoint(out_dir, lambda d: save_fn(model, d), extra, state)


def restore_training_state(
    out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> dict[str, Any]:
    """Load the newest complete checkpoint in `out_dir` (the previous one if the last save was cut short) into
    `model` and `optimizer`, and the RNG; returns its trainer_state.json (step, history, ...)."""
    from danlu.models.checkpoints import load_model

    if _sharded(model):
        from danlu.train.fsdp import restore_sharded

        step, history = restore_sharded(out_dir, model, optimizer, device)
        return {"step": step, "history": history}
    ckpt_dir, _ = find_checkpoint(out_dir)
    state = json.loads((ckpt_dir / "trainer_state.json").read_text())
    model.load_state_dict(load_model(ckpt_dir).state_dict())
    try:
        extra = torch.load(ckpt_dir / "optimizer.pt", map_location=device, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say so instead of a pickle traceback
        raise DanluError(f"cannot resume: {ckpt_dir / 'optimizer.pt'} is unreadable ({e})") from e
    if "optimizer" not in extra:  # danlu.train.fsdp keeps the optimizer in the checkpoint's sharded/ folder
        raise DanluError(
            f"cannot resume: {ckpt_dir} was saved by a --strategy fsdp run (its optimizer state is sharded); "
            "resume it under torchrun with --strategy fsdp, or start afresh from its model.safetensors"
        )
    optimizer.load_state_dict(extra["optimizer"])
    torch.set_rng_state(extra["rng_cpu"].cpu())
    if "rng_cuda" in extra and device.type == "cuda":
        torch.cuda.set_rng_state(extra["rng_cuda"].cpu(), device)
    return state
