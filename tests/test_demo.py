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
    probe = metrics["stages"]["samples"]["knowledge"]  # the world probe, held-in and held-out facts
    assert probe["chance"] == 0.25
    assert all(0 <= probe[k] <= 1 for k in ("mc_heldin", "mc_heldout", "arithmetic"))
    report = (demo_dir / "report.md").read_text()
    for heading in [
        "## 1. The world",
        "## 2. Tokenizer",
        "## 3. Pretraining",
        "## 4. Samples",
        "## 5. What the pretrained model knows",
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
    from danlu.errors import DanluError
    from danlu.recipes.demo import resolve_stages

    assert resolve_stages(None) == ["world", "tokenizer", "pretrain", "samples"]
    assert resolve_stages("bert") == ["world", "tokenizer", "bert"]
    assert resolve_stages("all")[-1] != "world" and len(resolve_stages("all")) >= 6
    with pytest.raises(DanluError, match="unknown demo stage 'nope'"):
        resolve_stages("samples,nope")


def test_alignment_runs_pretrain_longer_unless_told():
    from danlu.recipes.demo import (
        PRETRAIN_STEPS,
        PRETRAIN_STEPS_ALIGN,
        default_pretrain_steps,
        resolve_stages,
    )

    assert default_pretrain_steps(resolve_stages(None)) == PRETRAIN_STEPS
    assert default_pretrain_steps(resolve_stages("grpo")) == PRETRAIN_STEPS_ALIGN > PRETRAIN_STEPS
    assert default_pretrain_steps(resolve_stages("all")) == PRETRAIN_STEPS_ALIGN


def _pretrain_flags(stages, **given):
    import argparse

    from danlu.recipes.demo import pretrain_schedule, resolve_stages
    from danlu.recipes.demo_schedule import resolve_pretrain_flags

    args = argparse.Namespace(**({"steps": None, "lr": None, "min_lr": None} | given))
    resolve_pretrain_flags(args, pretrain_schedule(resolve_stages(stages)))
    return args.steps, args.lr, args.min_lr


def test_default_demo_pretrains_on_its_own_schedule_and_the_alignment_base_is_unchanged():
    """Issue 21 item 8: the default group's shorter schedule (3 minutes on 2 cores) must not move the base the
    alignment stages (and the PPO / GRPO experiments) stand on: 1000 steps, 2e-3 decaying to 2e-4."""
    for stages in ("grpo", "ppo", "sft", "lab", "all"):
        assert _pretrain_flags(stages) == (1000, 2e-3, pytest.approx(2e-4))
    from danlu.recipes.demo_schedule import PRETRAIN_DEFAULT

    steps, lr, min_lr = _pretrain_flags(None)
    assert steps < 1000 and min_lr == pytest.approx(lr * PRETRAIN_DEFAULT.final_lr_ratio)
    # flags the user gives win; --min-lr left out follows the given --lr
    ratio = PRETRAIN_DEFAULT.final_lr_ratio
    assert _pretrain_flags(None, steps=7, lr=1e-3) == (7, 1e-3, pytest.approx(1e-3 * ratio))
    assert _pretrain_flags("grpo", min_lr=0.0) == (1000, 2e-3, 0.0)


def test_min_lr_above_the_peak_is_refused(capsys, tmp_path):
    code = main(["demo", "--out", str(tmp_path / "d"), "--lr", "1e-3", "--min-lr", "2e-3"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "--min-lr" in err and "Traceback" not in err
    assert not (tmp_path / "d" / "world").exists()


def _commonmark_fences(markdown: str) -> list[str]:
    from markdown_it import MarkdownIt

    return [t.content for t in MarkdownIt("commonmark").parse(markdown) if t.type == "fence"]


def test_report_samples_survive_a_commonmark_renderer(demo_dir):
    """Each sample (prompt + continuation) comes out of a CommonMark parser as one code block, character for
    character; nothing in it became emphasis or HTML."""
    from markdown_it import MarkdownIt

    metrics = json.loads((demo_dir / "metrics.json").read_text())
    samples = metrics["stages"]["samples"]["texts"]
    assert len(samples) == 4
    report = (demo_dir / "report.md").read_text()
    fences = _commonmark_fences(report)
    for sample in samples:
        assert sample["prompt"] + sample["continuation"] + "\n" in fences
    html = MarkdownIt("commonmark").render(report)
    assert "<em>" not in html.split("Samples from the pretrained model")[1].split("<pre>")[1]


def test_samples_section_keeps_hostile_text_literal():
    """What broke before: `- **Bonalen likes to **49 this year.` (emphasis swallowed), multi-line samples
    collapsed into one paragraph; plus HTML, backtick fences and leading spaces in generated text."""
    from markdown_it import MarkdownIt

    from danlu.recipes.demo import samples_section

    samples = [
        ("Bonalen likes to ", "49 this year. **bold?** _x_"),
        ("佐维兰", "喜欢米饭。\n\n  indented line\nsecond <img src=x onerror=alert(1)> line"),
        ("code ", "```\nnot a fence end ``` `tick`"),
        (" spaced", " "),
    ]
    md = samples_section(samples, 0.5, 10)
    fences = _commonmark_fences(md)
    assert fences == [p + o.rstrip() + "\n" for p, o in samples]
    html = MarkdownIt("commonmark").render(md)
    assert "<img" not in html and "<em>" not in html and "<strong>Sample 1</strong>" in html
    spans = [t for t in MarkdownIt("commonmark").parse(md) if t.type == "inline"]
    code = [c.content for t in spans for c in t.children or [] if c.type == "code_inline"]
    assert code == [p for p, _ in samples]  # every prompt exactly, trailing and leading spaces included


def test_report_figures_and_paths(demo_dir):
    """One number per figure (the text's training time is the metrics' train_seconds, the table's the stage's)
    and a generate command whose path works from where the demo ran."""
    metrics = json.loads((demo_dir / "metrics.json").read_text())
    pre = metrics["stages"]["pretrain"]
    report = (demo_dir / "report.md").read_text()
    assert f"the training loop took {pre['train_seconds']:.0f} s" in report
    assert f"| pretrain | {pre['seconds']:.0f} |" in report
    checkpoint = demo_dir / "pretrain" / "checkpoint"
    assert f"danlu generate --model {checkpoint} Zovelan" in report
    assert "--model pretrain/checkpoint" not in report


def test_sample_prompts_end_on_a_word():
    """Byte-level BPE puts a word's space in front of it: an English prompt ending in a space would end on a lone
    space token the model rarely saw, and its samples ignore the prompt (found in issue 21's decoding lab)."""
    from danlu.recipes.demo import _sample_prompts

    texts = [
        "Bonalen likes to read books every day.",
        "泽林住在维尔马尔。",
        "The capital of Dedoto is Zadan.",
    ]
    prompts = _sample_prompts(texts, n=4)
    assert prompts == ["Bonalen likes to", "泽林住在", "The capital of", "泽林住在"]
    assert not any(p != p.rstrip() for p in prompts)
