"""`danlu demo` end to end at toy scale, then `danlu eval` and `danlu generate` on the checkpoint it wrote."""

import json

import pytest

from danlu.cli import main


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--out", str(out), "--size", "tiny", "--pretrain-steps", "60", "--batch-size", "16",
                 "--block-size", "64", "--vocab-size", "512", "--lr", "3e-3", "--samples", "4", "--quiet"])  # fmt: skip
    assert code == 0
    return out


def test_demo_writes_report_metrics_and_plots(demo_dir):
    metrics = json.loads((demo_dir / "metrics.json").read_text())
    assert list(metrics["stages"]) == ["world", "tokenizer", "pretrain", "samples"]
    pre = metrics["stages"]["pretrain"]
    assert pre["steps"] == 60 and pre["final_val_loss"] < 0.75 * pre["first_val_loss"]
    assert metrics["stages"]["tokenizer"]["vocab_size"] == 512
    assert 0.0 <= metrics["stages"]["samples"]["valid_word_fraction"] <= 1.0
    report = (demo_dir / "report.md").read_text()
    for heading in [
        "## 1. The world",
        "## 2. Tokenizer",
        "## 3. Pretraining",
        "## 4. Samples",
    ]:  # numbered in order
        assert heading in report
    assert (demo_dir / "pretrain" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (demo_dir / "pretrain" / "checkpoint" / "tokenizer.json").is_file()


def test_eval_on_the_demo_checkpoint(demo_dir, capsys):
    out = demo_dir / "eval"
    code = main(["eval", "--model", str(demo_dir / "pretrain" / "checkpoint"), "--world", str(demo_dir / "world"),
                 "--out", str(out), "--limit", "12", "--max-new-tokens", "8"])  # fmt: skip
    assert code == 0
    result = json.loads((out / "eval.json").read_text())
    m = result["metrics"]
    assert 1.0 < m["perplexity"]["perplexity"] < 512  # better than uniform over the vocabulary
    assert 0.0 <= m["exact_match"]["overall"] <= 1.0
    assert list(out.glob("*.png"))


def test_generate_and_chat_on_the_demo_checkpoint(demo_dir, capsys, monkeypatch):
    ck = str(demo_dir / "pretrain" / "checkpoint")
    assert main(["generate", "--model", ck, "Zovelan", "--max-new-tokens", "8", "--seed", "1"]) == 0
    assert capsys.readouterr().out.strip()
    lines = iter(["hello", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--model", ck, "--max-new-tokens", "6", "--seed", "1"]) == 0
    assert "bot> " in capsys.readouterr().out


def test_stage_selection():
    from danlu.demo import resolve_stages
    from danlu.errors import DanluError

    assert resolve_stages(None) == ["world", "tokenizer", "pretrain", "samples"]
    assert resolve_stages("bert") == ["world", "tokenizer", "bert"]
    assert resolve_stages("all")[-1] != "world" and len(resolve_stages("all")) >= 6
    with pytest.raises(DanluError, match="unknown demo stage 'nope'"):
        resolve_stages("samples,nope")


def test_alignment_runs_pretrain_longer_unless_told():
    from danlu.demo import PRETRAIN_STEPS, PRETRAIN_STEPS_ALIGN, default_pretrain_steps, resolve_stages

    assert default_pretrain_steps(resolve_stages(None)) == PRETRAIN_STEPS
    assert default_pretrain_steps(resolve_stages("grpo")) == PRETRAIN_STEPS_ALIGN > PRETRAIN_STEPS
    assert default_pretrain_steps(resolve_stages("all")) == PRETRAIN_STEPS_ALIGN
