"""How the training loop spreads a model over processes, and how it trades compute for memory.

Strategies (`TrainConfig.strategy`, `--strategy`):
  single  one process holds the whole model, its gradients and its optimizer state.
  ddp     DistributedDataParallel under `torchrun`: every process holds a full copy; gradients are averaged
          (all-reduce) after the last micro-batch of a step. Memory per process is that of `single`.
  fsdp    FSDP2 (`torch.distributed.fsdp.fully_shard`, danlu.train.fsdp) under `torchrun`: each Transformer
          block's weights, gradients and AdamW state are split in 1/world_size pieces; a block's full weights
          exist only while it runs (all-gather before, reduce-scatter of gradients after; Zhao et al. 2023,
          "PyTorch FSDP", and ZeRO-3, Rajbhandari et al. 2020). Memory for weights + gradients + optimizer
          shrinks by world_size; activations do not.
  auto    ddp under torchrun with more than one process, single otherwise.

Gradient checkpointing (`--gradient-checkpointing`) keeps only each block's input in the forward pass and
recomputes the block's activations in the backward pass (Chen et al. 2016, "Training deep nets with sublinear
memory cost"): activation memory drops from all layers' intermediates to one layer's plus n_layer inputs,
at the price of a second forward (about 1/3 more compute). `danlu plan` predicts both.

Every process sees batch_size / world_size sequences of each micro-batch, so one step's gradient is the
mean over the same batch whatever the strategy: 1 process and N processes follow the same loss curve.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from danlu.errors import DanluError


def resolve_strategy(strategy: str, world_size: int) -> str:
    """The strategy ("single" | "ddp" | "fsdp") that `strategy` means with `world_size` processes (a DanluError when it
    cannot work, e.g. ddp without torchrun)."""
    if strategy == "auto":
        return "ddp" if world_size > 1 else "single"
    if strategy == "single" and world_size > 1:
        raise DanluError(
            f"--strategy single runs one process, but torchrun started {world_size}; launch without torchrun, "
            "or use --strategy ddp or fsdp"
        )
    if strategy in ("ddp", "fsdp") and world_size == 1:
        return "single"  # one process holds everything: sharding over one process changes nothing
    return strategy


def model_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The repeated Transformer blocks (GPT.blocks), the unit of sharding and of recomputation."""
    blocks = getattr(model, "blocks", None)
    return blocks if isinstance(blocks, nn.ModuleList) else None


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each block's forward in the backward pass (torch.utils.checkpoint, non-reentrant).

    The block's own `forward` is replaced on the instance, so parameter names, checkpoints and FSDP's hooks on
    the module stay as they are. Outside autograd (evaluation, generation) the block runs as before."""
    from torch.utils.checkpoint import checkpoint

    blocks = model_blocks(model)
    if blocks is None:
        raise DanluError(
            f"--gradient-checkpointing needs a model made of Transformer blocks (model.blocks); "
            f"{type(model).__name__} has none"
        )
    for block in blocks:
        if getattr(block, "_danlu_recompute", False):
            continue
        inner = block.forward

        def forward(*args: Any, _inner=inner, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _inner(*args, **kwargs)
            # use_reentrant=False: works with keyword arguments, with inputs that need no grad and with FSDP2
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward
        block._danlu_recompute = True


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


@contextmanager
def grad_sync(train_model: nn.Module, strategy: str, sync: bool) -> Iterator[None]:
    """Average gradients across processes only when `sync` (the last micro-batch of a step)."""
    if strategy == "ddp" and not sync:
        with train_model.no_sync():
            yield
    elif strategy == "fsdp":
        # FSDP2 keeps the unsharded gradients of non-sync micro-batches and reduce-scatters at the last one
        train_model.set_requires_gradient_sync(sync)
        yield
    else:
        yield


def plain_number(x: torch.Tensor) -> float:
    """A float from a tensor that may be a DTensor (FSDP's gradient norm)."""
    if hasattr(x, "full_tensor"):
        x = x.full_tensor()
    return float(x)
