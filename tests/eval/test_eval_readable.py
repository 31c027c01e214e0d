"""Evaluation output a reader can trust: a note when exact match cannot mean anything (a model never
instruction-tuned), the exact-match plot on a fixed 0..1 axis with labels that do not overlap, and PR curves that
all stay visible when two classes' curves coincide."""

import json

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb

import danlu
from danlu import plots
from danlu.data.world import write_world
from danlu.eval import report
from danlu.eval.world_eval import evaluate_model


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: a second OpenMP thread only waits for a core on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    write_world(out, seed=0, size="tiny")
    return out


@pytest.fixture
def figures(monkeypatch):
    """Every figure the report module saves, by file name."""
    saved = {}
    real = plots.save_figure

    def keep(fig, path):
        saved[path.name] = fig
        return real(fig, path)

    monkeypatch.setattr(plots, "save_figure", keep)
    return saved


def test_a_base_model_gets_a_note(make_gpt, tokenizer, world_dir, tmp_path, figures):
    model = make_gpt().eval()  # random weights: never instruction-tuned
    result = evaluate_model(model, tokenizer, world_dir, tmp_path / "out", max_new_tokens=4, limit=6)
    assert len(result["notes"]) == 1 and "never instruction-tuned" in result["notes"][0]
    assert (
        json.loads((tmp_path / "out" / "eval.json").read_text(encoding="utf-8"))["notes"] == result["notes"]
    )


def test_the_exact_match_plot_has_a_0_to_1_axis_and_labels_apart(
    make_gpt, tokenizer, world_dir, tmp_path, figures
):
    evaluate_model(make_gpt().eval(), tokenizer, world_dir, tmp_path / "out", max_new_tokens=4, limit=6)
    ax = figures["exact_match.png"].axes[0]
    assert ax.get_ylim() == (0.0, 1.0)  # main: about -0.04..0.04 when every value is 0
    fig = figures["exact_match.png"]
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in ax.get_xticklabels() if t.get_text()]
    assert len(boxes) >= 3
    for a, b in zip(boxes, boxes[1:]):
        assert not a.overlaps(b), "x labels overlap"


def test_the_cli_prints_the_note(make_gpt, tokenizer, world_dir, tmp_path, capsys):
    from danlu.cli import main

    danlu.save(make_gpt().eval(), tokenizer, tmp_path / "base")
    argv = [
        "eval",
        "--model",
        str(tmp_path / "base"),
        "--world",
        str(world_dir),
        "--out",
        str(tmp_path / "e"),
    ]
    assert main([*argv, "--limit", "3", "--max-new-tokens", "4"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "cannot be meaningful" in notes[0] and "danlu sft" in notes[0]


class EndsItsTurns(torch.nn.Module):
    """A model that has learned where a reply ends: it strongly predicts `<|im_end|>` (and nothing else
    changes), as an instruction-tuned model does after an answer."""

    def __init__(self, gpt, end_id):
        super().__init__()
        self.gpt, self.end_id, self.config = gpt, end_id, gpt.config

    def forward(self, input_ids):
        out = self.gpt(input_ids)
        out.logits[..., self.end_id] += 20.0
        return out


def test_no_note_for_a_model_that_ends_its_replies(make_gpt, tokenizer, world):
    from danlu.eval.world_eval import answer_format_notes  # here: today's main lacks it; the others still run

    records = world.sft_records("test")[:8]
    model = EndsItsTurns(make_gpt().eval(), tokenizer.token_to_id("<|im_end|>"))
    assert answer_format_notes(model, tokenizer, records, {"fact": 0.5}) == []
    assert (
        "never instruction-tuned"
        in answer_format_notes(make_gpt().eval(), tokenizer, records, {"fact": 0.5})[0]
    )
    # and a template-less tokenizer is said to be one
    assert "no chat template" in answer_format_notes(model, object(), records, {"fact": 0.5})[0]


def colour_pixels(fig, colour, tol=0.08) -> int:
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0  # (H, W, 3)
    return int((np.abs(image - np.array(to_rgb(colour))).max(-1) < tol).sum())


def test_coinciding_pr_curves_all_stay_visible(tmp_path, figures):
    recall = np.linspace(0, 1, 11)
    curves = {  # two perfect classes: the very same curve; a third below them
        "cat": (recall, np.ones(11), 1.0),
        "dog": (recall, np.ones(11), 1.0),
        "emu": (recall, np.linspace(1, 0.5, 11), 0.75),
    }
    report.plot_pr_curves(curves, tmp_path / "pr.png")
    fig = figures["pr.png"]
    ax = fig.axes[0]
    ax.get_legend().set_visible(False)  # only the curves themselves count
    lines = ax.get_lines()
    assert len(lines) == 3
    for line in lines:
        assert colour_pixels(fig, line.get_color()) > 30, f"{line.get_label()} is hidden"
