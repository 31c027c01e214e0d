"""The one training loop: AdamW, warmup + decay, gradient accumulation and clipping, mixed precision on CUDA,
periodic evaluation, metrics, atomic checkpoints with exact resume, and DDP under `torchrun`.

Vocabulary (notes 004 §epochs/batches/iterations): a *micro-batch* is what one forward pass sees; `grad_accum`
micro-batches make one *step* (one optimizer update, one *iteration*); an *epoch* is one pass over the training
tokens, reported as tokens seen / corpus size because blocks are sampled at random offsets.

Batches come from `batch_fn(split, step, micro)`, a pure function of its arguments (see danlu.data.datasets), so
resuming restores only the model, the optimizer and the step: the rest of the run is bit-identical.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.errors import DanluError
from danlu.fileio import atomic_write_text
from danlu.train.checkpoint import TrainingInterrupted, find_checkpoint, save_checkpoint
from danlu.train.config import TrainConfig
from danlu.train.distributed import enable_gradient_checkpointing, grad_sync, plain_number, resolve_strategy
from danlu.train.schedule import lr_at

BatchFn = Callable[[str, int, int], dict[str, torch.Tensor]]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DanluError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    return torch.device(name)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: norms' gains, biases and (1-D) other vectors are not regularised toward zero."""
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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


def train(
    model: nn.Module,
    batch_fn: BatchFn,
    cfg: TrainConfig,
    out_dir: str | Path,
    save_fn: Callable[[nn.Module, Path], None] | None = None,
    resume: bool = False,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train `model` on batches from `batch_fn`; write metrics.jsonl, loss.png and checkpoints to `out_dir`.

    `save_fn(model, dir)` writes a model checkpoint (model weights, config, tokenizer) into `dir`; the loop adds
    `trainer_state.json` and `optimizer.pt` beside it for `resume=True`. `eval_fn(model)` may add metrics to each
    evaluation. `on_step(step, metrics)` is called after each step (tests use it to interrupt a run).
    Ctrl-C stops at the end of the current step, saves a checkpoint and raises TrainingInterrupted.
    Returns a summary: steps, first/final train and validation loss, tokens seen, seconds.
    """
    out_dir = Path(out_dir)
    dist = DistInfo()
    if cfg.batch_size % dist.world_size:
        raise DanluError(f"batch_size {cfg.batch_size} is not divisible by the {dist.world_size} processes")
    device = resolve_device(cfg.device)
    if dist.enabled:
        import torch.distributed as tdist

        if device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(device)
        if not tdist.is_initialized():
            tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    block_limit = getattr(getattr(model, "config", None), "block_size", None)
    if block_limit is not None and cfg.block_size > block_limit:
        raise DanluError(
            f"block_size {cfg.block_size} is larger than the model's context ({block_limit} positions); "
            f"use --block-size {block_limit} or less, or a model with a longer context"
        )
    torch.manual_seed(cfg.seed)
    model.to(device)
    strategy = resolve_strategy(cfg.strategy, dist.world_size)  # danlu.train.distributed
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if strategy == "fsdp":  # in place, before the optimizer sees the parameters (danlu.train.fsdp)
        from danlu.train.fsdp import restore_sharded, save_sharded_checkpoint, shard_model

        shard_model(model, device)
    use_bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda")
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        fused=device.type == "cuda",  # one kernel for all parameters on GPU
    )
    start_step, history = 0, {"first_train_loss": None, "first_val_loss": None}
    if resume:
        restore = restore_sharded if strategy == "fsdp" else _restore
        start_step, history = restore(out_dir, model, optimizer, device)
    train_model: nn.Module = model
    if cfg.compile:
        train_model = torch.compile(model)
    if strategy == "ddp":
        from danlu.train.distributed import wrap_ddp

        train_model = wrap_ddp(train_model, device)

    metrics_path = out_dir / "metrics.jsonl"
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(metrics_path, start_step)

    def log(record: dict[str, Any]) -> None:
        if dist.is_main:
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def to_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    @torch.no_grad()
    def evaluate(step: int) -> dict[str, float]:
        model.eval()
        losses = []
        for i in range(cfg.eval_batches):
            with autocast:
                losses.append(model(**to_device(batch_fn("val", i, 0))).loss.float())
        val_loss = _mean_over_ranks(torch.stack(losses).mean(), dist).item()
        result = {"val_loss": val_loss}
        if eval_fn is not None:
            result.update(eval_fn(model))
        model.train()
        if history["first_val_loss"] is None:
            history["first_val_loss"] = val_loss
        log({"step": step, **result})
        return result

    def checkpoint(step: int) -> Path | None:
        if save_fn is None or (not dist.is_main and strategy != "fsdp"):  # FSDP: every rank saves its shard
            return None
        state = {"step": step, "train_config": asdict(cfg), "history": history, "world_size": dist.world_size}
        extra = {"rng_cpu": torch.get_rng_state()}
        if device.type == "cuda":
            extra["rng_cuda"] = torch.cuda.get_rng_state(device)
        if strategy == "fsdp":
            return save_sharded_checkpoint(out_dir, model, optimizer, save_fn, extra, state)
        extra["optimizer"] = optimizer.state_dict()
        # Weights, optimizer, state and tokenizer written whole, then published by rename (train/checkpoint.py).
        return save_checkpoint(out_dir, lambda d: save_fn(model, d), extra, state)

    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.block_size
    bar = None
    if cfg.show_progress and dist.is_main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
    model.train()
    t0 = time.perf_counter()
    last_val: dict[str, float] = {}
    train_loss = float("nan")
    stop = _CtrlC(enabled=not dist.enabled)  # under DDP every process gets the signal: keep its default
    try:
        for step in range(start_step, cfg.max_steps):
            lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr, cfg.decay)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                batch = to_device(batch_fn("train", step, micro))
                # Only the last micro-batch all-reduces gradients across processes.
                sync = micro == cfg.grad_accum - 1
                with grad_sync(train_model, strategy, sync):
                    with autocast:
                        loss = train_model(**batch).loss / cfg.grad_accum
                    loss.backward()
                loss_sum += loss.detach()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            train_loss = _mean_over_ranks(loss_sum, dist).item()
            if not math.isfinite(train_loss):
                raise DanluError(
                    f"training diverged at step {step + 1}: loss is {train_loss}; lower --lr (now {cfg.lr}) or "
                    "raise --warmup-steps"
                )
            if history["first_train_loss"] is None:
                history["first_train_loss"] = train_loss
            elapsed = time.perf_counter() - t0
            done = step + 1
            record = {
                "step": done,
                "loss": train_loss,
                "lr": lr,
                "grad_norm": plain_number(grad_norm),
                "tokens": done * tokens_per_step,
                "elapsed_s": round(elapsed, 3),
                "tok_per_s": round((done - start_step) * tokens_per_step / max(elapsed, 1e-9), 1),
            }
            log(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{train_loss:.3f}", lr=f"{lr:.1e}", **{k: f"{v:.3f}" for k, v in last_val.items()}
                )
            is_last = done == cfg.max_steps
            if (cfg.eval_interval and done % cfg.eval_interval == 0) or is_last or done == 1:
                last_val = evaluate(done)
            saved = None
            if is_last or (cfg.ckpt_interval and done % cfg.ckpt_interval == 0):
                saved = checkpoint(done)
            if on_step is not None:
                on_step(done, record)
            if stop.requested and not is_last:
                if bar is not None:
                    bar.close()
                saved = saved or checkpoint(done)
                where = (
                    f"checkpoint saved in {saved}" if saved else "this run keeps no checkpoint: nothing saved"
                )
                raise TrainingInterrupted(
                    f"interrupted after step {done} of {cfg.max_steps}; {where}", saved, done
                )
    finally:
        stop.restore()
    if bar is not None:
        bar.close()
    if start_step >= cfg.max_steps and dist.is_main:  # resumed a finished run: its last figures from the log
        for rec in map(json.loads, metrics_path.read_text().splitlines() if metrics_path.exists() else []):
            train_loss = rec.get("loss", train_loss)
            last_val = {k: v for k, v in rec.items() if k != "step"} if "val_loss" in rec else last_val
    if dist.is_main:
        from danlu.train.plots import plot_loss_curve

        plot_loss_curve(metrics_path, out_dir / "loss.png")
    return {
        "steps": cfg.max_steps,
        "first_train_loss": history["first_train_loss"],
        "final_train_loss": train_loss,
        "first_val_loss": history["first_val_loss"],
        "final_val_loss": last_val.get("val_loss"),
        **{k: v for k, v in last_val.items() if k != "val_loss"},
        "tokens": cfg.max_steps * tokens_per_step,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _mean_over_ranks(x: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    if not dist.enabled:
        return x
    import torch.distributed as tdist

    x = x.detach().clone()
    tdist.all_reduce(x, op=tdist.ReduceOp.SUM)
    return x / dist.world_size


def _restore(out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
    """Load the newest complete checkpoint in `out_dir` (the previous one if the last save was cut short)."""
    from danlu.models.checkpoints import load_model

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
    return int(state["step"]), state.get("history", {"first_train_loss": None, "first_val_loss": None})


class _CtrlC:
    """The first Ctrl-C (SIGINT) asks the loop to stop at the end of the current step, save a checkpoint and
    raise TrainingInterrupted, so the optimizer is never cut mid-update; a second one stops at once."""

    def __init__(self, enabled: bool) -> None:
        import signal
        import threading

        self.requested = False
        self.previous = None
        if enabled and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # nobody else handles Ctrl-C
                self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nCtrl-C: stopping after this step to save a checkpoint (Ctrl-C again to quit now)",
            file=sys.stderr,
        )

    def restore(self) -> None:
        if self.previous is not None:
            import signal

            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records past the checkpoint so the log reads as one uninterrupted run."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))
