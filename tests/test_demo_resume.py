"""`danlu demo --resume` goes on after the last finished stage (issue 20: a Ctrl-C after 23 minutes lost all)."""

import json

import danlu.recipes.demo as demo
from danlu.cli import main

TINY = ["--size", "tiny", "--pretrain-steps", "6", "--batch-size", "4", "--block-size", "32", "--vocab-size", "300",
        "--samples", "2", "--quiet"]  # fmt: skip


def test_demo_resumes_after_the_last_finished_stage(tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    real = dict(demo.STAGES)

    def ctrl_c(ctx):
        raise KeyboardInterrupt

    monkeypatch.setitem(demo.STAGES, "samples", ctrl_c)
    assert main(["demo", "--out", str(out), *TINY]) == 130
    err = capsys.readouterr().err
    assert "finished stages (world, tokenizer, pretrain) are kept" in err
    assert "resume with: " in err and err.strip().endswith("--resume")
    recorded = json.loads((out / "demo_state.json").read_text())
    assert recorded["finished"] == ["world", "tokenizer", "pretrain"]
    pretrain_metrics = recorded["metrics"]["pretrain"]

    assert main(["demo", "--out", str(out), *TINY]) == 2  # no silent restart over the partial run
    assert "already holds a run" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), *TINY, "--seed", "1", "--resume"]) == 2
    assert "--seed 0 (now 1)" in capsys.readouterr().err

    ran = []
    for name in real:  # the finished stages must not run again; the rest runs for real
        monkeypatch.setitem(demo.STAGES, name, lambda ctx, n=name: ran.append(n) or real[n](ctx))
    # --threads is not a setting: the resumed run may use another thread count
    assert main(["demo", "--out", str(out), *TINY, "--resume", "--threads", "1"]) == 0
    assert ran == ["samples"]
    metrics = json.loads((out / "metrics.json").read_text())["stages"]
    assert list(metrics) == ["world", "tokenizer", "pretrain", "samples"]
    assert metrics["pretrain"] == pretrain_metrics
    report = (out / "report.md").read_text()
    for i, heading in enumerate(["The world", "Tokenizer", "Pretraining", "Samples"], start=1):
        assert f"## {i}. {heading}" in report
    assert json.loads((out / "demo_state.json").read_text())["finished"][-1] == "samples"
