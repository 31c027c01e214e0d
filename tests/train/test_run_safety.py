"""A finished run is never overwritten without a word, Ctrl-C leaves a resumable checkpoint and says how to
resume, outputs get the modes a plain open() gives (issue 20, "Silent data loss")."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from danlu.cli import main

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, world, tokenizer):
    from danlu.data.world import write_world

    d = tmp_path_factory.mktemp("inputs")
    write_world(d / "world", seed=0, size="tiny")
    tokenizer.save(d / "tok")
    return d


def _pretrain_args(inputs, out, *extra):
    return ["pretrain", "--data", str(inputs / "world"), "--tokenizer", str(inputs / "tok"), "--out", str(out),
            "--batch-size", "4", "--block-size", "32", "--eval-batches", "1", "--quiet", *extra]  # fmt: skip


def test_pretrain_refuses_a_finished_run_unless_resume_or_overwrite(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_pretrain_args(inputs, out, "--max-steps", "2")) == 0
    weights = (out / "checkpoint" / "model.safetensors").read_bytes()
    metrics = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(_pretrain_args(inputs, out, "--max-steps", "2")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "checkpoint" / "model.safetensors").read_bytes() == weights  # untouched
    assert (out / "metrics.jsonl").read_text() == metrics
    assert main(_pretrain_args(inputs, out, "--max-steps", "2", "--resume", "--overwrite")) == 2
    assert "not both" in capsys.readouterr().err
    assert main(_pretrain_args(inputs, out, "--max-steps", "3", "--resume")) == 0  # continues with step 3
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == 3
    assert main(_pretrain_args(inputs, out, "--max-steps", "1", "--overwrite")) == 0  # a fresh 1-step run
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == 1
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # one record a step: its loss and its evaluation in one line
    assert [r["step"] for r in records] == [1] and {"loss", "val_loss"} <= set(records[0])


# Every command that writes a run into --out, with an OUT holding what it would overwrite. The check runs
# before any model is loaded, so the model and data paths are empty placeholders (they only have to exist,
# since the flag checks that run first look for them).
GUARDED = [
    (["sft", "--model", "M", "--data", "D"], "checkpoint"),
    (["reward", "--model", "M", "--data", "D"], "checkpoint"),
    (["dpo", "--model", "M", "--data", "D"], "metrics.jsonl"),
    (["ppo", "--model", "M", "--reward-model", "R", "--data", "D"], "checkpoint"),
    (["grpo", "--model", "M", "--data", "D"], "metrics.jsonl"),
    (["seq2seq", "train", "--data", "D"], "translate"),
    (["bert", "train", "--data", "D"], "pretrain"),
    (["vit", "train"], "checkpoint"),
    (["clip", "train"], "metrics.jsonl"),
    (["diffusion", "train"], "ema"),
    (["demo"], "demo_state.json"),
]


@pytest.mark.parametrize("argv,existing", GUARDED, ids=[" ".join(a[:2]) for a, _ in GUARDED])
def test_every_trainer_refuses_to_overwrite(argv, existing, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for placeholder in ("M", "D", "R"):
        (tmp_path / placeholder).mkdir()
    out = tmp_path / "run"
    (out / existing).mkdir(parents=True) if "." not in existing else (
        out.mkdir(),
        (out / existing).write_text("{}"),
    )
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out} already holds a run ({existing})") and "--overwrite" in err
    assert (out / existing).exists()


def _steps_logged(out):
    path = out / "metrics.jsonl"
    return sum('"loss"' in line for line in path.read_text().splitlines()) if path.exists() else 0


def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(inputs, tmp_path):
    out = tmp_path / "run"
    # every step logged: the test waits for two steps done, and checks the resumed log holds every step once
    argv = _pretrain_args(
        inputs, out, "--max-steps", "12", "--eval-interval", "0", "--seed", "3", "--log-interval", "1"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # A shell running this test in the background may have made SIGINT ignored: give the child the default.
    proc = subprocess.Popen([sys.executable, "-m", "danlu", *argv], env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 120
    while _steps_logged(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert 2 <= state["step"] < 12  # the last finished step, saved although --ckpt-interval is 0
    assert f"interrupted after step {state['step']} of 12; checkpoint saved in {out / 'checkpoint'}" in err
    resume = err.split("resume with: ")[1].splitlines()[0]
    assert resume == f"{shlex.quote(sys.executable)} -m danlu {shlex.join(argv)} --resume"
    done = subprocess.run(shlex.split(resume), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == 12
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == list(range(1, 13))  # one run in the log: nothing lost, nothing twice


def test_outputs_get_the_umask_modes(tmp_path):
    from danlu.fileio import atomic_dir, atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.md", "x")
        with atomic_dir(tmp_path / "checkpoint") as d:
            (d / "config.json").write_text("{}")
        os.umask(0o027)
        atomic_write_text(tmp_path / "private.json", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "checkpoint").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "checkpoint" / "config.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o640  # the umask decides, as for open()


def test_training_outputs_are_0644(inputs, tmp_path):
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert main(_pretrain_args(inputs, out, "--max-steps", "1")) == 0
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"metrics.jsonl", "loss.png", "model.safetensors", "trainer_state.json",
                                       "optimizer.pt", "tokenizer.json", "config.json"}  # fmt: skip
    assert {p.relative_to(out).as_posix(): oct(p.stat().st_mode & 0o777) for p in files} == {
        p.relative_to(out).as_posix(): "0o644" for p in files
    }
    assert (out / "checkpoint").stat().st_mode & 0o777 == 0o755
