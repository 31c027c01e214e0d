"""FSDP2 for the training loop: shard a model over the torchrun processes, save and resume sharded checkpoints.

Sharding (`shard_model`): every Transformer block is its own FSDP unit (its weights are all-gathered just
before it runs and freed after), then the root module takes the rest (embeddings, final norm, LM head; a tied
LM head stays tied because both names live in the root unit). Each parameter becomes a DTensor holding
dim-0 rows [rank·⌈n/W⌉, (rank+1)·⌈n/W⌉) of the full tensor, W = world size.

A sharded checkpoint is the ordinary OUT/checkpoint folder (danlu.train.checkpoint: written whole, published
by rename) with:
  model.safetensors, config.json, ...  the consolidated model, gathered on rank 0: any danlu command loads it
  sharded/shard-0000R-model-00001-of-00001.safetensors
                                       each rank's slice of the weights and of AdamW's exp_avg / exp_avg_sq /
                                       step, written by torch.distributed.checkpoint (DCP) through its
                                       safetensors storage: the slice offsets are JSON in each file's header
  optimizer.pt                         RNG state only (a weights_only torch file)
DCP's default storage keeps its index as a pickle; the safetensors storage used here has none, so resuming
never unpickles anything (docs/SECURITY.md). Hyper-parameters of the optimizer are not stored: the loop
rebuilds them from the TrainConfig and sets the learning rate at every step.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.errors import DanluError
from danlu.train.checkpoint import find_checkpoint, save_checkpoint
from danlu.train.distributed import model_blocks

SHARDED = "sharded"  # the folder of DCP shards inside a checkpoint
SHARDS_STAGING = ".sharded.new"  # where the ranks write their shards before rank 0 publishes the checkpoint
_PLAIN_CLASS = "_danlu_plain_class"


def shard_model(model: nn.Module, device: torch.device) -> None:
    """fully_shard `model` in place over all processes (one FSDP unit per block, then the root)."""
    import torch.distributed as tdist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    cls = type(model)
    mesh = init_device_mesh(device.type, (tdist.get_world_size(),))
    for block in model_blocks(model) or []:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    setattr(model, _PLAIN_CLASS, cls)  # fully_shard swaps the class for an FSDP subclass of it


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _aliases(model_sd: dict[str, torch.Tensor]) -> dict[str, str]:
    """{name: first name} for tensors sharing memory with an earlier one (a tied LM head and embedding):
    safetensors stores each storage once."""
    first: dict[tuple[int, tuple[int, ...]], str] = {}
    aliases = {}
    for name, t in model_sd.items():
        key = (_local(t).data_ptr(), tuple(t.shape))
        if key in first and _local(t).numel():
            aliases[name] = first[key]
        else:
            first.setdefault(key, name)
    return aliases


def _flat(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Model and optimizer state as one flat {name: tensor} dict (safetensors holds tensors only)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)  # fills an empty AdamW state with zeros first
    aliases = _aliases(model_sd)
    flat = {f"model.{k}": v for k, v in model_sd.items() if k not in aliases}
    for name, state in optim_sd["state"].items():
        for key, value in state.items():
            flat[f"optim.{name}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return flat


def _unflat(flat: dict[str, torch.Tensor], model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    aliases = _aliases(model_sd)
    model_sd = {k: flat[f"model.{aliases.get(k, k)}"] for k in model_sd}
    for name, state in optim_sd["state"].items():
        for key in state:
            state[key] = flat[f"optim.{name}.{key}"]
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)


def plain_model(model: nn.Module) -> nn.Module | None:
    """The consolidated model: full weights gathered on CPU, a plain (unsharded) module on rank 0, None on
    the other ranks. Every rank must call it (it is a collective)."""
    import torch.distributed as tdist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if tdist.get_rank() != 0:
        return None
    cls = getattr(model, _PLAIN_CLASS, type(model))
    with torch.device("meta"):  # no second random init: the weights come from `full`
        plain = cls(model.config)
    plain.load_state_dict(full, assign=True)
    if getattr(plain.config, "tie_embeddings", False) and hasattr(plain, "lm_head"):
        plain.lm_head.weight = plain.wte.weight  # assign=True gave the two names two tensors
    if hasattr(plain, "init_buffers"):
        plain.init_buffers()  # non-persistent tables (RoPE) built on meta: rebuild them
    return plain


def save_sharded_checkpoint(
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    save_fn: Any,
    extra: dict[str, Any],
    state: dict[str, Any],
) -> Path | None:
    """Every rank writes its shards; rank 0 adds the consolidated model and publishes OUT/checkpoint.
    Returns the checkpoint folder on rank 0, None elsewhere."""
    import torch.distributed as tdist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    staging = Path(out_dir) / SHARDS_STAGING
    rank = tdist.get_rank()
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)  # shards of a save cut by a kill
        staging.mkdir(parents=True)
    tdist.barrier()
    dcp.save(
        _flat(model, optimizer), storage_writer=HuggingFaceStorageWriter(str(staging), save_distributed=True)
    )
    plain = plain_model(model)
    tdist.barrier()  # every rank's shards are on disk
    saved = None
    if rank == 0:

        def write_model(folder: Path) -> None:
            save_fn(plain, folder)
            shutil.move(str(staging), str(folder / SHARDED))

        state = {**state, "strategy": "fsdp"}
        saved = save_checkpoint(out_dir, write_model, extra, state)
    tdist.barrier()  # no rank starts the next step (or the next save) before the checkpoint is published
    return saved


def restore_sharded(
    out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[int, dict[str, Any]]:
    """Load the newest complete checkpoint's shards into the sharded `model` and `optimizer`; returns
    (step, history) as the loop's single-process restore does."""
    import json

    import torch.distributed as tdist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    ckpt_dir, _ = find_checkpoint(out_dir, say=tdist.get_rank() == 0)
    state = json.loads((ckpt_dir / "trainer_state.json").read_text())
    shards = ckpt_dir / SHARDED
    if not shards.is_dir():
        raise DanluError(
            f"cannot resume with --strategy fsdp: {ckpt_dir} holds no sharded state ({shards} is missing); "
            f"it was saved by a {state.get('strategy', 'single-process or DDP')} run: resume it with the "
            "strategy that wrote it"
        )
    from torch.distributed.checkpoint.api import CheckpointException

    flat = _flat(model, optimizer)
    try:
        dcp.load(flat, storage_reader=HuggingFaceStorageReader(str(shards)))
    except (Exception, CheckpointException) as e:  # a BaseException: it carries every rank's traceback
        # a broken or foreign shard: one line (the root cause, the last line of the report), not tracebacks
        why = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
        raise DanluError(f"cannot resume: the shards in {shards} are unreadable ({why})") from None
    _unflat(flat, model, optimizer)
    try:
        extra = torch.load(ckpt_dir / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as e:
        raise DanluError(f"cannot resume: {ckpt_dir / 'optimizer.pt'} is unreadable ({e})") from e
    torch.set_rng_state(extra["rng_cpu"].cpu())
    if "rng_cuda" in extra and device.type == "cuda":
        torch.cuda.set_rng_state(extra["rng_cuda"].cpu(), device)
    return int(state["step"]), state.get("history", {"first_train_loss": None, "first_val_loss": None})
