"""The one training loop, shared by the offline stages (pretraining, SFT, reward model, DPO, BERT, seq2seq,
vision) and the online RL trainers (PPO, GRPO): AdamW over decay / no-decay groups, warmup + decay, micro-batch
accumulation and clipping, mixed precision on CUDA, logging every N steps without a host sync per step,
periodic evaluation, plots, atomic checkpoints with exact resume, Ctrl-C saves, DDP under `torchrun`.

Vocabulary (notes 004 §epochs/batches/iterations): a *micro-batch* is what one forward pass sees; the
micro-batches of one *update* make one optimizer step; a *step* of the loop (one *iteration*) is one update
for the offline stages and one round of experience and its updates for PPO / GRPO; an *epoch* is one pass over
the training tokens, reported as tokens seen / corpus size because blocks are sampled at random offsets.

What differs between trainers is an `Objective`: its `work(step)` gives the step's updates (offline: the
`grad_accum` micro-batches `batch_fn("train", step, micro)`; online: experience sampled from the policy) and
its `loss(model, batch)` the loss of one micro-batch. Everything else is the loop's (`run`). Offline batches
are a pure function of (seed, step, micro-step) (see danlu.data.datasets), so resuming restores only the
model, the optimizer and the step: the rest of the run is bit-identical.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.errors import DanluError
from danlu.train.checkpoint import TrainingInterrupted
from danlu.train.config import LoopConfig, TrainConfig
from danlu.train.flops import flops_per_token, mfu, peak_flops
from danlu.train.metrics import Meter, MetricsLog, wide
from danlu.train.optim import build_optimizer, clip_gradients, param_groups, set_lr
from danlu.train.strategy import (
    DistInfo,
    mean_over_ranks,
    no_sync,
    resolve_device,
    restore_training_state,
    save_training_state,
    setup_device,
    wrap_model,
)

__all__ = [
    "DistInfo",
    "Objective",
    "StepWork",
    "TrainConfig",
    "param_groups",
    "resolve_device",
    "run",
    "train",
]

BatchFn = Callable[[str, int, int], dict[str, torch.Tensor]]


@dataclass
class StepWork:
    """One step's work: `updates` (each the list of micro-batches of one optimizer step, their gradients
    summed) and `figures` to log for the step (tensors stay on the device until a log step)."""

    updates: list[list[Any]]
    figures: dict[str, Any] = field(default_factory=dict)


class Objective:
    """What a trainer plugs into the loop. `model` is what the loop trains, clips, saves and restores."""

    name = "train"  # the progress bar's label
    progress_keys: tuple[str, ...] = ("loss", "lr")  # figures shown on the progress bar
    eval_before_training = False  # online trainers measure the starting policy (step 0)
    tokens_per_step: int | None = None  # set: tokens/s (and MFU on CUDA) are logged
    context: int = 0  # tokens per sequence, for the attention FLOPs of MFU

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def setup(self, device: torch.device) -> None:
        """Move what else the objective runs (frozen models) to `device`; called once before training."""
        self.device = device

    def param_groups(self, cfg: LoopConfig) -> list[dict[str, Any]]:
        """The optimizer's groups; a group may carry its own "peak_lr" / "min_lr" (else cfg.lr / cfg.min_lr)."""
        return param_groups(self.model, cfg.weight_decay)

    def clip_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters clipped together to cfg.grad_clip, by name ("" logs as grad_norm, "x" as grad_norm_x)."""
        return {"": [p for p in self.model.parameters() if p.requires_grad]}

    def work(self, step: int) -> StepWork:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss of one micro-batch, figures to log); `model` is the wrapped (compiled / DDP) model."""
        raise NotImplementedError

    def evaluate(self, step: int) -> dict[str, float]:
        """Figures of an evaluation at `step` ({}: nothing to evaluate)."""
        return {}

    def plot(self, records: list[dict[str, Any]], out_dir: Path) -> None:
        from danlu.train.plots import plot_loss_curve

        plot_loss_curve(out_dir / "metrics.jsonl", out_dir / "loss.png")


class BatchObjective(Objective):
    """The offline stages: a model whose forward returns `.loss` on batches from `batch_fn(split, step, micro)`;
    evaluation is the mean loss of `eval_batches` validation batches, plus `eval_fn(model)`'s figures."""

    def __init__(
        self, model: nn.Module, batch_fn: BatchFn, cfg: TrainConfig, eval_fn=None, dist=None
    ) -> None:
        super().__init__(model)
        self.batch_fn, self.cfg, self.eval_fn = batch_fn, cfg, eval_fn
        self.dist = dist or DistInfo()
        self.tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.block_size
        self.context = cfg.block_size

    def setup(self, device: torch.device) -> None:
        super().setup(device)
        use_bf16 = self.cfg.dtype == "bfloat16" or (self.cfg.dtype == "auto" and device.type == "cuda")
        self.autocast = (
            (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16))
            if use_bf16
            else nullcontext
        )

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def work(self, step: int) -> StepWork:
        return StepWork(
            [[self._to_device(self.batch_fn("train", step, m)) for m in range(self.cfg.grad_accum)]]
        )

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        with self.autocast():
            return model(**batch).loss, {}

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        self.model.eval()
        losses = []
        for i in range(self.cfg.eval_batches):
            with self.autocast():
                losses.append(self.model(**self._to_device(self.batch_fn("val", i, 0))).loss.float())
        result = {"val_loss": mean_over_ranks(torch.stack(losses).mean(), self.dist).item()}
        if self.eval_fn is not None:
            result.update(self.eval_fn(self.model))
        self.model.train()
        return result


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
    evaluation. `on_step(step, record)` is called after each step (tests use it to interrupt a run); `record`
    holds the loss only at log steps. Ctrl-C stops at the end of the current step, saves a checkpoint and raises
    TrainingInterrupted. Returns a summary: steps, first/final train and validation loss, tokens, seconds.
    """
    dist = DistInfo()
    if cfg.batch_size % dist.world_size:
        raise DanluError(f"batch_size {cfg.batch_size} is not divisible by the {dist.world_size} processes")
    block_limit = getattr(getattr(model, "config", None), "block_size", None)
    if block_limit is not None and cfg.block_size > block_limit:
        raise DanluError(
            f"block_size {cfg.block_size} is larger than the model's context ({block_limit} positions); "
            f"use --block-size {block_limit} or less, or a model with a longer context"
        )
    objective = BatchObjective(model, batch_fn, cfg, eval_fn, dist)
    return run(objective, cfg, out_dir, save_fn=save_fn, resume=resume, on_step=on_step)


def run(
    objective: Objective,
    cfg: LoopConfig,
    out_dir: str | Path,
    save_fn: Callable[[nn.Module, Path], None] | None = None,
    resume: bool = False,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The loop: `cfg.max_steps` steps of `objective`'s work, logged, evaluated, plotted and checkpointed."""
    out_dir = Path(out_dir)
    dist = DistInfo()
    device = setup_device(cfg.device, dist)
    torch.manual_seed(cfg.seed)
    model = objective.model.to(device)
    objective.setup(device)
    # Wrapped before the optimizer is built: a sharding strategy (FSDP2) replaces the parameters it optimizes.
    train_model = wrap_model(model, cfg, dist, device)
    optimizer = build_optimizer(objective.param_groups(cfg), cfg, device)
    start_step, history = 0, {"first_train_loss": None, "first_val_loss": None}
    if resume:
        state = restore_training_state(out_dir, model, optimizer, device)
        start_step, history = int(state["step"]), state.get("history", history)
    log = MetricsLog(out_dir, start_step, enabled=dist.is_main)
    clip_groups = objective.clip_groups()
    speed = _Speed(objective, model, device, dist, start_step)

    def checkpoint(step: int) -> Path | None:
        if save_fn is None:
            return None
        # Weights, optimizer, state and tokenizer written whole, then published by rename (train/checkpoint.py).
        return save_training_state(
            out_dir, model, save_fn, optimizer, {"step": step, "history": history}, cfg, dist, device
        )

    def evaluate(step: int) -> dict[str, float]:
        result = objective.evaluate(step)
        if result:
            history.setdefault("first_eval", result)
            if history["first_val_loss"] is None and "val_loss" in result:
                history["first_val_loss"] = result["val_loss"]
        return result

    bar = None
    if cfg.show_progress and dist.is_main:
        from tqdm import tqdm

        bar = tqdm(
            total=cfg.max_steps, initial=start_step, desc=objective.name, unit="step", dynamic_ncols=True
        )
    model.train()
    t0 = time.perf_counter()
    if objective.eval_before_training and start_step == 0:
        first = evaluate(0)
        if first:
            log.write({"step": 0, **first})
    last_eval: dict[str, float] = {}
    last: dict[str, Any] = {}
    meter = Meter()
    stop = _CtrlC(enabled=not dist.enabled)  # under DDP every process gets the signal: keep its default
    try:
        for step in range(start_step, cfg.max_steps):
            lr = set_lr(optimizer, step, cfg)
            work = objective.work(step)
            figures = _do_updates(objective, work, train_model, optimizer, clip_groups, cfg, dist)
            meter.add({**figures, **work.figures})
            done = step + 1
            is_last = done == cfg.max_steps
            evals = (cfg.eval_interval and done % cfg.eval_interval == 0) or is_last
            evals = evals or (done == 1 and not objective.eval_before_training)
            saves = save_fn is not None and (
                is_last or bool(cfg.ckpt_interval and done % cfg.ckpt_interval == 0)
            )
            record: dict[str, Any] = {"step": done, "lr": lr}
            # A log step reads the device's sums (the one host sync); so does any step that evaluates or saves.
            if done % cfg.log_interval == 0 or done == 1 or evals or saves or stop.requested or is_last:
                record |= meter.means(reduce=lambda t: mean_over_ranks(t, dist))
                _check_finite(record, done, cfg)
                if history["first_train_loss"] is None and "loss" in record:
                    history["first_train_loss"] = record["loss"]
                record |= speed(done, time.perf_counter() - t0)
                history["last_loss"] = record.get("loss")
                if evals and (result := evaluate(done)):
                    record |= result
                    last_eval = history["last_eval"] = result
                last = record
                log.write(record)
            if bar is not None:
                bar.update(1)
                if record is last:
                    shown = {
                        k: record[k] for k in (*objective.progress_keys, "val_loss", "mfu") if k in record
                    }
                    bar.set_postfix({k: f"{v:.3g}" if isinstance(v, float) else v for k, v in shown.items()})
            saved = checkpoint(done) if saves else None
            if on_step is not None:
                on_step(done, record)
            if stop.requested and not is_last:
                if meter:  # Ctrl-C came after this step's log check: its window still goes into the log
                    record |= meter.means(reduce=lambda t: mean_over_ranks(t, dist))
                    log.write(record | speed(done, time.perf_counter() - t0))
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
    if start_step >= cfg.max_steps:  # resumed a finished run: its last figures, as its checkpoint kept them
        last, last_eval = {"loss": history.get("last_loss", float("nan"))}, history.get("last_eval", {})
    seconds = time.perf_counter() - t0
    if dist.is_main:
        objective.plot(log.records(), out_dir)
    return _summary(objective, cfg, history, last, last_eval, seconds)


def _do_updates(objective, work, train_model, optimizer, clip_groups, cfg, dist) -> dict[str, torch.Tensor]:
    """The step's optimizer updates; returns its mean loss, gradient norms and loss figures (on the device)."""
    loss_sum: torch.Tensor | None = None
    sums: dict[str, torch.Tensor] = {}
    norms: dict[str, torch.Tensor] = {}
    n_micro = 0
    for micro_batches in work.updates:
        update_loss = None
        for i, batch in enumerate(micro_batches):
            with no_sync(train_model, dist, last_micro=i == len(micro_batches) - 1):
                loss, figures = objective.loss(train_model, batch)
                loss = loss / len(micro_batches)
                loss.backward()
            update_loss = loss.detach() if update_loss is None else update_loss + loss.detach()
            for k, v in figures.items():
                sums[k] = wide(v) if k not in sums else sums[k] + wide(v)
            n_micro += 1
        for name, norm in clip_gradients(clip_groups, cfg.grad_clip).items():
            key = f"grad_norm_{name}" if name else "grad_norm"
            norms[key] = norm if key not in norms else norms[key] + norm
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum = update_loss if loss_sum is None else loss_sum + update_loss
    n_updates = len(work.updates)
    out = {"loss": loss_sum / n_updates if n_updates > 1 else loss_sum}
    out |= {k: v / n_updates if n_updates > 1 else v for k, v in norms.items()}
    out |= {k: v / n_micro for k, v in sums.items()}
    return out


class _Speed:
    """Elapsed time, tokens and tokens/s of a log record; MFU on a CUDA device with a known peak."""

    def __init__(self, objective: Objective, model: nn.Module, device: torch.device, dist: DistInfo,
                 start_step: int) -> None:  # fmt: skip
        self.tokens_per_step, self.start_step, self.world_size = (
            objective.tokens_per_step,
            start_step,
            dist.world_size,
        )
        self.peak = peak_flops(device) if self.tokens_per_step else None
        self.flops = flops_per_token(model, objective.context) if self.peak else 0.0

    def __call__(self, done: int, elapsed: float) -> dict[str, float]:
        out: dict[str, float] = {"elapsed_s": round(elapsed, 3)}
        if self.tokens_per_step:
            tok_per_s = (done - self.start_step) * self.tokens_per_step / max(elapsed, 1e-9)
            out |= {"tokens": done * self.tokens_per_step, "tok_per_s": round(tok_per_s, 1)}
            if self.peak:  # per device: under DDP each process does 1/world_size of the tokens
                out["mfu"] = round(mfu(tok_per_s / self.world_size, self.flops, self.peak), 4)
        return out


def _check_finite(record: dict[str, Any], step: int, cfg: LoopConfig) -> None:
    loss = record.get("loss")
    if loss is not None and not math.isfinite(loss):
        when = (
            f"at step {step}"
            if cfg.log_interval == 1
            else f"by step {step} (logged every {cfg.log_interval})"
        )
        raise DanluError(
            f"training diverged {when}: loss is {loss}; lower --lr (now {cfg.lr}) or raise --warmup-steps"
        )


def _summary(objective, cfg, history, last, last_eval, seconds) -> dict[str, Any]:
    summary = {
        "steps": cfg.max_steps,
        "first_train_loss": history["first_train_loss"],
        "final_train_loss": last.get("loss", float("nan")),
        "first_val_loss": history["first_val_loss"],
        "final_val_loss": last_eval.get("val_loss"),
        **{k: v for k, v in last_eval.items() if k != "val_loss"},
    }
    if objective.tokens_per_step:
        summary["tokens"] = cfg.max_steps * objective.tokens_per_step
        for k in ("tok_per_s", "mfu"):
            if k in last:
                summary[k] = last[k]
    if objective.eval_before_training:
        summary["first_eval"] = history.get("first_eval")
        summary["last_eval"] = last_eval or None
    summary["seconds"] = round(seconds, 2)
    return summary


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
