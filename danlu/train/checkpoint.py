"""Resumable checkpoints, written whole and published by rename: a kill at any moment leaves one to resume.

A checkpoint is the folder OUT/checkpoint: the model files `save_fn` writes (weights, config.json, tokenizer),
`optimizer.pt` (optimizer and RNG state, a `weights_only` torch file) and `trainer_state.json` (step, config,
history, and the size of every file in the folder). All of it is written into the private folder
OUT/.checkpoint.new first, synced to disk, and only then swapped in by `danlu.fileio.replace_dir`, which keeps
the previous checkpoint at OUT/.checkpoint.old for the instant between its two renames. `find_checkpoint`
looks at both, so resuming always finds a complete checkpoint: the newest one published, or the one before it.

Tests widen or hit the write window through two environment variables read only here:
DANLU_TEST_CHECKPOINT_PAUSE (seconds to sleep at each point of the write) and DANLU_TEST_CHECKPOINT_KILL
("POINT@STEP": the process SIGKILLs itself at that point of the checkpoint of that step).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from danlu.errors import DanluError
from danlu.fileio import default_modes, fsync_tree, previous_dir, replace_dir

CHECKPOINT = "checkpoint"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
STAGING = ".checkpoint.new"
# The points of one checkpoint write, in order (the last two are inside danlu.fileio.replace_dir).
WRITE_POINTS = ("after_weights", "after_optimizer", "before_publish", "between_renames", "after_publish")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training at a step boundary; `checkpoint` holds that step (None when nothing was saved)."""

    def __init__(self, message: str, checkpoint: Path | None, step: int) -> None:
        super().__init__(message)
        self.checkpoint, self.step = checkpoint, step


def _test_hook(step: int) -> Callable[[str], None] | None:
    pause = float(os.environ.get("DANLU_TEST_CHECKPOINT_PAUSE", "0") or 0)
    kill = os.environ.get("DANLU_TEST_CHECKPOINT_KILL", "")
    if not pause and not kill:
        return None

    def hook(where: str) -> None:
        if pause:
            time.sleep(pause)
        if kill == f"{where}@{step}":
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def save_checkpoint(
    out_dir: str | Path, write_model: Callable[[Path], None], extra: dict[str, Any], state: dict[str, Any]
) -> Path:
    """Write a whole checkpoint into OUT/.checkpoint.new, then publish it as OUT/checkpoint.

    `write_model(folder)` writes the model files into `folder` (which does not exist yet); `extra` goes to
    optimizer.pt (tensors and plain containers only), `state` to trainer_state.json."""
    out_dir = Path(out_dir)
    staging = out_dir / STAGING
    for leftover in [staging, *out_dir.glob(f".{STAGING}.*.tmp")]:  # a write cut by an earlier kill
        shutil.rmtree(leftover, ignore_errors=True)
    hook = _test_hook(int(state.get("step", -1)))
    write_model(staging)
    staging.mkdir(parents=True, exist_ok=True)
    if hook:
        hook("after_weights")
    buf = io.BytesIO()
    torch.save(extra, buf)
    (staging / OPTIMIZER_FILE).write_bytes(buf.getvalue())  # the folder is private until published
    if hook:
        hook("after_optimizer")
    files = {str(p.relative_to(staging)): p.stat().st_size for p in sorted(staging.rglob("*")) if p.is_file()}
    (staging / STATE_FILE).write_text(json.dumps({**state, "files": files}, indent=2))
    default_modes(staging)
    fsync_tree(staging)
    if hook:
        hook("before_publish")
    target = out_dir / CHECKPOINT
    if target.exists() and checkpoint_step(target) is None:
        # A partial folder from an older danlu: replace_dir would retire it over the complete `.old`.
        shutil.rmtree(target)
    replace_dir(staging, target, pause=hook)
    return target


def checkpoint_step(folder: Path) -> int | None:
    """The step a checkpoint folder holds, or None when it is not a complete resumable checkpoint."""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        step = state["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(step, int) or not (folder / OPTIMIZER_FILE).is_file():
        return None
    files = state.get("files")
    if isinstance(files, dict):  # written by save_checkpoint: every file there, at its size
        for name, size in files.items():
            p = folder / name
            if not p.is_file() or p.stat().st_size != size:
                return None
    elif not (folder / "config.json").is_file():  # an older danlu's checkpoint: at least a model beside it
        return None
    return step


def find_checkpoint(out_dir: str | Path, say: bool = True) -> tuple[Path, int]:
    """(folder, step) of the newest complete checkpoint in OUT: OUT/checkpoint, or else the previous one that a
    cut swap left at OUT/.checkpoint.old (said in one line on stderr when `say`). A DanluError when neither is."""
    target = Path(out_dir) / CHECKPOINT
    step = checkpoint_step(target)
    if step is not None:
        return target, step
    old = previous_dir(target)
    old_step = checkpoint_step(old)
    if old_step is not None:
        if say:
            why = "is incomplete" if target.exists() else "is missing (a save was cut short)"
            print(
                f"note: {target} {why}; resuming from the last complete checkpoint, {old} (step {old_step})",
                file=sys.stderr,
            )
        return old, old_step
    what = "is incomplete" if target.exists() else "does not exist"
    raise DanluError(
        f"cannot resume: {target} {what} and there is no earlier complete checkpoint. Resume needs the --out "
        "folder of an earlier run that saved a checkpoint; drop --resume to start afresh"
    )
