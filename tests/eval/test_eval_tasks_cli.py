"""`danlu eval --task mc|qa|pass@k|preference|knowledge`: each kind of note 002 from the command line gives the
library's figures, writes eval.json, and a bad file is one `error:` line naming the file, line or value."""

import json

import pytest

from danlu.cli import main
from danlu.eval.choice import MCItem, evaluate_multiple_choice
from danlu.eval.execution import pass_at_k
from danlu.eval.preference import leaderboard, read_comparisons
from danlu.eval.qa import evaluate_qa
from danlu.models.checkpoints import save_model


def write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return str(path)


def eval_json(out):
    return json.loads((out / "eval.json").read_text())


def test_qa(tmp_path, capsys):
    rows = [{"prediction": "the Velmar", "references": ["Velmar", "Velmar city"]},
            {"prediction": "Tolin river", "reference": "the Tolin"},
            {"prediction": "no idea", "references": ["Sadan"]}]  # fmt: skip
    assert main(["eval", "--task", "qa", "--predictions", write(tmp_path / "qa.jsonl", rows), "--out",
                 str(tmp_path / "o")]) == 0  # fmt: skip
    want = evaluate_qa(
        [r["prediction"] for r in rows], [r.get("references", r.get("reference")) for r in rows]
    )
    m = eval_json(tmp_path / "o")["metrics"]
    assert m == {"exact_match": want.exact_match, "f1": want.f1} and 0 < m["f1"] < 1
    assert "f1: " in capsys.readouterr().out


def test_pass_at_k_and_k_larger_than_n(tmp_path, capsys):
    rows = [
        {"n": 10, "c": 3},
        {"passed": [True, False, False, False, True, False, False, False, False, False]},
    ]
    path = write(tmp_path / "p.jsonl", rows)
    assert main(["eval", "--task", "pass@k", "--predictions", path, "--pass-at", "1", "5", "--out",
                 str(tmp_path / "o")]) == 0  # fmt: skip
    m = eval_json(tmp_path / "o")["metrics"]
    for k in (1, 5):
        assert m[f"pass@{k}"] == pytest.approx((pass_at_k(10, 3, k) + pass_at_k(10, 2, k)) / 2, abs=1e-12)
    assert main(["eval", "--task", "pass@k", "--predictions", path, "--pass-at", "11", "--out",
                 str(tmp_path / "o2")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "k: must be within 1..n=10" in err and "--pass-at 11" in err


def test_preference_leaderboard_and_an_unknown_model(tmp_path, capsys):
    rows = [{"model_a": a, "model_b": b, "winner": w} for a, b, w in
            [("x", "y", "a"), ("x", "y", "b"), ("y", "z", "a"), ("x", "z", "a"), ("z", "x", "tie"),
             ("x", "y", "a"), ("y", "z", "b"), ("z", "x", "b")]]  # fmt: skip
    path = write(tmp_path / "pref.jsonl", rows)
    out = tmp_path / "o"
    assert main(["eval", "--task", "preference", "--predictions", path, "--out", str(out)]) == 0
    result = eval_json(out)
    board = leaderboard(read_comparisons(rows))
    assert result["metrics"]["rating"] == pytest.approx(board.rating)
    assert result["metrics"]["order"] == list(board.models)
    assert (out / "leaderboard.png").stat().st_size > 1000
    assert main(["eval", "--task", "preference", "--predictions", path, "--models", "x", "y", "--out",
                 str(tmp_path / "o2")]) == 2  # fmt: skip
    assert "unknown model 'z'" in capsys.readouterr().err


def test_multiple_choice_equals_the_library_and_one_choice_is_an_error(tmp_path, make_gpt, tokenizer, capsys):
    model = make_gpt()
    ck = save_model(model, tmp_path / "m", tokenizer=tokenizer)
    rows = [{"query": "The capital of Zorvia is", "choices": ["Velmar.", "Tolin.", "Sadan."], "gold": 0},
            {"query": "Mira likes to eat", "choices": ["rice.", "noodles."], "gold": 1},
            {"query": "3 + 4 =", "choices": ["7", "8", "12"], "gold": 0}]  # fmt: skip
    path = write(tmp_path / "mc.jsonl", rows)
    assert main(["eval", "--task", "mc", "--model", str(ck), "--data", path, "--num-fewshot", "1", "--out",
                 str(tmp_path / "o")]) == 0  # fmt: skip
    items = [MCItem(r["query"], tuple(r["choices"]), r["gold"]) for r in rows]
    want = evaluate_multiple_choice(model.eval(), tokenizer, items, num_fewshot=1, seed=1234)
    assert eval_json(tmp_path / "o")["metrics"] == {"acc": want.acc, "acc_norm": want.acc_norm}
    bad = write(tmp_path / "bad.jsonl", [rows[0], {"query": "q", "choices": ["only"], "gold": 0}])
    assert (
        main(["eval", "--task", "mc", "--model", str(ck), "--data", bad, "--out", str(tmp_path / "o2")]) == 2
    )
    err = capsys.readouterr().err
    assert "bad.jsonl line 2" in err and "at least 2 choices" in err
    assert main(["eval", "--task", "mc", "--data", path, "--out", str(tmp_path / "o3")]) == 2
    assert "--task mc needs --model" in capsys.readouterr().err


def test_knowledge_probe_of_a_world_folder(tmp_path, make_gpt, tokenizer):
    from danlu.data.world import write_world

    write_world(tmp_path / "w", seed=0, size="tiny")
    ck = save_model(make_gpt(), tmp_path / "m", tokenizer=tokenizer)
    assert main(["eval", "--task", "knowledge", "--model", str(ck), "--world", str(tmp_path / "w"), "--limit", "4",
                 "--out", str(tmp_path / "o")]) == 0  # fmt: skip
    result = eval_json(tmp_path / "o")
    m = result["metrics"]
    assert result["n"] == 12 and m["chance"] == 0.25
    assert all(0 <= m[k] <= 1 for k in ("mc_heldin", "mc_heldout", "completion_heldin", "arithmetic"))
