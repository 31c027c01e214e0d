"""The training loop: schedule, exact resume after an interruption, DDP equivalence, bad configs."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from danlu.data.datasets import sample_blocks
from danlu.errors import DanluError
from danlu.models.checkpoints import save_model
from danlu.models.gpt import GPT, GPTConfig
from danlu.train.loop import TrainConfig, train
from danlu.train.schedule import lr_at

HERE = Path(__file__).parent


def test_schedule_warmup_then_cosine_to_floor():
    lrs = [lr_at(s, 1.0, 10, 110, 0.1, "cosine") for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # monotone decay after warmup
    assert lrs[60] == pytest.approx(0.1 + 0.5 * (1 + math.cos(math.pi * 0.5)) * 0.9)
    assert lr_at(110, 1.0, 10, 110, 0.1, "cosine") == pytest.approx(0.1)
    assert lr_at(60, 1.0, 10, 110, 0.0, "linear") == pytest.approx(0.5)


def _setup(tmp_path):
    torch.manual_seed(0)
    corpus = torch.randint(0, 50, (4000,), generator=torch.Generator().manual_seed(3))
    model = GPT(
        GPTConfig.from_name("llama-tiny", vocab_size=50, n_layer=2, n_embd=32, n_head=4, block_size=32)
    )

    def batch_fn(split, step, micro):
        x = sample_blocks(corpus, 4, 16, 0 if split == "train" else 7, step, micro)
        return {"input_ids": x, "labels": x}

    return model, batch_fn


def _records(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def _losses(out_dir):
    recs = _records(out_dir)
    return [r["loss"] for r in recs if "loss" in r], [r["val_loss"] for r in recs if "val_loss" in r]


def test_resume_after_interruption_is_exact(tmp_path):
    cfg = TrainConfig(max_steps=12, batch_size=4, block_size=16, lr=5e-3, warmup_steps=3, eval_interval=4,
                      eval_batches=2, ckpt_interval=4, show_progress=False)  # fmt: skip
    model, batch_fn = _setup(tmp_path)
    full = train(model, batch_fn, cfg, tmp_path / "full", save_fn=save_model)

    class Killed(Exception):
        pass

    def kill_at_10(step, record):
        if step == 10:  # after the step-8 checkpoint: steps 9 and 10 are lost and must be redone
            raise Killed

    model, batch_fn = _setup(tmp_path)
    with pytest.raises(Killed):
        train(model, batch_fn, cfg, tmp_path / "cut", save_fn=save_model, on_step=kill_at_10)
    state = json.loads((tmp_path / "cut" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 8
    model, batch_fn = _setup(tmp_path)  # a fresh process would start from a fresh model
    resumed = train(model, batch_fn, cfg, tmp_path / "cut", save_fn=save_model, resume=True)
    assert resumed["steps"] == full["steps"] == 12
    assert resumed["final_train_loss"] == full["final_train_loss"]
    assert resumed["final_val_loss"] == full["final_val_loss"]
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")  # the log reads as one run
    assert full["final_val_loss"] < full["first_val_loss"]
    assert (tmp_path / "full" / "loss.png").stat().st_size > 1000


def test_two_processes_match_one(tmp_path):
    """torchrun with 2 CPU processes (gloo), each half the batch, gives the 1-process loss curve."""
    script = str(HERE / "ddp_script.py")
    one = subprocess.run([sys.executable, script, str(tmp_path / "one")], capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         script, str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    train_1, val_1 = _losses(tmp_path / "one")
    train_2, val_2 = _losses(tmp_path / "two")
    # logged every 2 steps, and at step 1 and at the evaluation of step 3: window means reduced over ranks
    steps = [r["step"] for r in _records(tmp_path / "two") if "loss" in r]
    assert steps == [r["step"] for r in _records(tmp_path / "one") if "loss" in r] == [1, 2, 3, 4, 6]
    assert len(train_1) == len(train_2) == 5 and len(val_1) == len(val_2) == 3
    assert max(abs(a - b) for a, b in zip(train_1 + val_1, train_2 + val_2)) < 1e-4


@pytest.mark.parametrize(
    "bad, needle",
    [({"lr": -1e-3}, "lr must be a positive number, got -0.001"), ({"max_steps": 0}, "max_steps"),
     ({"decay": "exp"}, "decay"), ({"lr": float("nan")}, "lr must be")],
)  # fmt: skip
def test_bad_train_config(bad, needle):
    with pytest.raises(DanluError, match=needle):
        TrainConfig(**bad)


def test_block_size_beyond_context(tmp_path):
    model, batch_fn = _setup(tmp_path)
    cfg = TrainConfig(max_steps=1, block_size=64, show_progress=False)
    with pytest.raises(DanluError, match="block_size 64 is larger than the model's context \\(32"):
        train(model, batch_fn, cfg, tmp_path)


def test_resume_without_checkpoint(tmp_path):
    model, batch_fn = _setup(tmp_path)
    with pytest.raises(DanluError, match="cannot resume"):
        train(
            model,
            batch_fn,
            TrainConfig(max_steps=1, block_size=16, show_progress=False),
            tmp_path,
            resume=True,
        )


def test_resuming_a_finished_run_reports_its_figures(tmp_path):
    cfg = TrainConfig(
        max_steps=3, batch_size=4, block_size=16, eval_interval=2, eval_batches=1, show_progress=False
    )
    model, batch_fn = _setup(tmp_path)
    full = train(model, batch_fn, cfg, tmp_path, save_fn=save_model)
    model, batch_fn = _setup(tmp_path)
    again = train(model, batch_fn, cfg, tmp_path, save_fn=save_model, resume=True)  # nothing left to run
    assert again["final_train_loss"] == full["final_train_loss"] and math.isfinite(again["final_train_loss"])
    assert again["final_val_loss"] == full["final_val_loss"]
