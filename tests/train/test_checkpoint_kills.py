"""Atomic checkpoints: SIGKILL at any moment, inside the checkpoint write too, and the run still resumes to
exactly the losses of an uninterrupted run (issue 15, finding 6)."""

import json
import multiprocessing
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from danlu.errors import DanluError
from danlu.train.checkpoint import WRITE_POINTS, find_checkpoint

HERE = Path(__file__).parent
STEPS = 12
# Kills the process does to itself at each point of a checkpoint write (step 5: between the two renames,
# when only .checkpoint.old is complete), then kills from outside at random moments of later steps.
SELF_KILLS = [("after_weights", 2), ("after_optimizer", 3), ("before_publish", 4), ("between_renames", 5),
              ("after_publish", 6)]  # fmt: skip
OUTSIDE_KILLS = 3


@pytest.fixture(scope="module")
def mp():
    """Children forked from a server that imported torch once: a run starts in milliseconds, not seconds."""
    sys.path.insert(0, str(HERE))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["kill_script"])
    yield ctx
    sys.path.remove(str(HERE))


def _start(mp, out, log, **env):
    import kill_script

    proc = mp.Process(target=kill_script.run, args=(str(out), STEPS, env, str(log)))
    proc.start()
    return proc


def _said(log):
    return log.read_text() if log.exists() else ""


def _resumed_from(log):
    return int(_said(log).split("resumed_from ")[1].split()[0])


def _records(out):
    lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def _losses(out):
    """Every logged train and validation loss, by step (timings left out)."""
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in _records(out)]


def _in_write_window(out):
    """Evidence of a checkpoint write in progress: the staging folder, its temp folders, or the retired one."""
    names = [p.name for p in out.iterdir()]
    return (
        any(n.startswith((".checkpoint.new", ".checkpoint.old")) for n in names) or "checkpoint" not in names
    )


def test_sigkill_anywhere_resumes_to_the_uninterrupted_losses(tmp_path, mp):
    reference = _start(mp, tmp_path / "reference", tmp_path / "reference.log")  # runs beside the chain
    out = tmp_path / "cut"
    expected_start, previous = 0, None
    for i, (point, step) in enumerate(SELF_KILLS):
        assert point in WRITE_POINTS
        log = tmp_path / f"self{i}.log"
        proc = _start(mp, out, log, DANLU_TEST_CHECKPOINT_KILL=f"{point}@{step}")
        proc.join(60)
        assert proc.exitcode == -signal.SIGKILL, _said(log)
        assert _resumed_from(log) == expected_start, (point, _said(log))
        if previous == "between_renames":  # the cut swap left only the previous checkpoint: said on stderr
            assert "resuming from the last complete checkpoint" in _said(log) and ".checkpoint.old" in _said(
                log
            )
        # What a resume finds now: the last checkpoint published before the kill.
        published = step if point == "after_publish" else step - 1
        if published == 0:
            with pytest.raises(DanluError):
                find_checkpoint(out, say=False)
        else:
            assert find_checkpoint(out, say=False)[1] == published, point
        expected_start, previous = published, point

    # Kills from outside at random moments, with every checkpoint write slowed to make its window wide.
    rng, inside = random.Random(0), 0
    for i in range(OUTSIDE_KILLS):
        log = tmp_path / f"outside{i}.log"
        floor = len(_records(out))
        proc = _start(mp, out, log, DANLU_TEST_CHECKPOINT_PAUSE="0.03")
        deadline = time.monotonic() + 60
        while len(_records(out)) <= floor and proc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.15))
        proc.kill()
        proc.join(60)
        assert proc.exitcode == -signal.SIGKILL, _said(log)
        inside += _in_write_window(out)
        assert _resumed_from(log) == expected_start, _said(log)
        expected_start = find_checkpoint(out, say=False)[1]

    final = _start(mp, out, tmp_path / "final.log")
    final.join(60)
    reference.join(60)
    assert final.exitcode == 0 and reference.exitcode == 0, _said(tmp_path / "final.log")
    assert "finished" in _said(tmp_path / "final.log")
    want = _losses(tmp_path / "reference")
    # one record a step (a checkpoint every step makes each a log step), its evaluation in it
    assert [r[0] for r in want] == list(range(1, STEPS + 1)) and want[-1][2] is not None
    assert _losses(out) == want  # bit-identical losses at every step, the final one included
    print(f"\n{len(SELF_KILLS)} kills inside the write window, {OUTSIDE_KILLS} from outside ({inside} of them "
          f"inside it); final train/val loss {want[-1][1]} / {want[-1][2]}")  # fmt: skip
