"""experiments/scaling.py, icl.py and cot.py: the scaling fit recovers a known law, and each script's `run`
entry goes end to end at a tiny scale (the keys, ranges and intervals, not the figures the full runs report)."""

import json
from pathlib import Path

import pytest

from danlu.models.checkpoints import save_model


def test_fit_recovers_a_known_law_and_predicts_a_held_out_size(script):
    scaling = script("scaling")
    truth = {"E": 1.2, "A": 40.0, "alpha": 0.35, "B": 300.0, "beta": 0.3}
    grid = [(n, d) for n in (1e4, 2e4, 4e4, 8e4, 3.2e5) for d in (8e4, 1.6e5, 3.2e5)]
    rows = [{"N": n, "D": d, "loss": scaling.predict(truth, n, d), "name": f"{n}_{d}"} for n, d in grid]
    params = scaling.fit(rows, seed=0, starts=8)
    assert params["rms_log_residual"] < 1e-4 and params["E"] <= min(r["loss"] for r in rows)
    # the held-out size between the two largest, at every budget: the law predicts it
    for d in (8e4, 1.6e5, 3.2e5):
        assert scaling.predict(params, 1.6e5, d) == pytest.approx(scaling.predict(truth, 1.6e5, d), rel=1e-3)
    loo = scaling.leave_one_size_out(rows, seed=0, starts=4)
    assert len(loo) == len(rows) and max(abs(r["relative_error"]) for r in loo) < 0.01


def test_scaling_run_end_to_end(script, world_dir, tmp_path):
    scaling = script("scaling")
    result = scaling.run(tmp_path / "s", quick=True, world=world_dir, steps=(2, 3, 4))
    assert len(result["runs"]) == 9 and len(result["held_out"]) == 3
    assert set(result["fit"]) >= {"E", "A", "alpha", "B", "beta"}
    assert all(
        h["N"] == result["held_out"][0]["N"] and "predicted" in h and "loss" in h for h in result["held_out"]
    )
    assert (
        json.loads((tmp_path / "s" / "scaling_prediction.json").read_text())["held_out"][0]["predicted"] > 0
    )
    assert Path(result["figure"]).is_file() and "| held-out size |" in result["markdown"]
    assert result["cpu_seconds"] > 0
    # icl.py on scaling.py's output, as `danlu demo --stages lab` chains them: its longest budget's models (the
    # held-out size too), smallest first, then the model it is handed (the lab's "demo"); the 32-token context
    # holds a zero-shot prompt but not eight examples, which are reported, not scored
    demo = ("demo", tmp_path / "s" / "runs" / "L1_C16_S2" / "checkpoint")
    report = script("icl").run(
        tmp_path / "icl", quick=True, runs=tmp_path / "s", models=[demo], world=world_dir
    )
    names = ["L1_C16_S4", "L1_C24_S4", "L1_C32_S4", "L1_C48_S4", "demo"]
    assert [r["model"] for r in report["results"]] == names
    cells = report["results"][0]["arith"]
    assert cells["0"]["items"] == 8 and cells["8"]["accuracy"] is None and "context" in cells["8"]["skipped"]
    assert "— (context)" in report["markdown"]


def test_icl_run_has_an_interval_per_cell(script, make_gpt, tokenizer, world_dir, tmp_path):
    icl = script("icl")
    ck = save_model(make_gpt(block_size=512), tmp_path / "model", tokenizer=tokenizer)  # room for 8 shots
    report = icl.run(tmp_path / "icl", quick=True, models=[("tiny", ck)], world=world_dir)
    row = report["results"][0]
    for kind in icl.KINDS:
        assert set(row[kind]) == {str(k) for k in icl.SHOTS}
        for cell in row[kind].values():
            low, high = cell["ci95"]
            assert cell["items"] == 8 and 0 <= low <= cell["accuracy"] <= high <= 1
    assert Path(report["figure"]).is_file() and "| tiny |" in report["markdown"]


def test_icl_scaling_runs_are_required_only_when_no_model_is_given(script, tmp_path):
    icl = script("icl")
    assert icl.scaling_models(tmp_path, required=False) == []  # the lab before (or without) lab_scaling
    with pytest.raises(SystemExit, match="run scaling.py first"):
        icl.scaling_models(tmp_path)
    with pytest.raises(SystemExit, match="run scaling.py first"):
        icl.run(tmp_path / "icl", quick=True, runs=tmp_path)


def test_icl_questions_never_appear_among_their_shots(script, world_dir):
    icl = script("icl")
    pool, test = icl._records(world_dir, "arith", "en", 20, seed=0)
    assert len(test) == 20  # 7 test questions topped up from sft_train
    assert not {r["instruction"] for r in test} & {r["instruction"] for r in pool}


def test_cot_run_scores_both_styles_with_intervals(script, make_gpt, tokenizer, tmp_path):
    cot = script("cot")
    ck = save_model(make_gpt(), tmp_path / "model", tokenizer=tokenizer)
    results = cot.run(tmp_path / "cot", quick=True, model=ck)
    for style in ("direct", "cot"):
        low, high = results[style]["ci95"]
        assert results[style]["items"] == 8 and 0 <= low <= results[style]["accuracy"] <= high <= 1
    low, high = results["cot_minus_direct"]["ci95"]
    assert -1 <= low <= results["cot_minus_direct"]["mean"] <= high <= 1
    assert Path(results["figure"]).is_file() and "paired bootstrap" in results["markdown"]
