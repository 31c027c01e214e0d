"""experiments/grpo_variants.py's --merge: seeds run as separate processes summarised as mean and spread of
each variant's gain, from the runs' own metrics (no training here: the runs are written by hand)."""

import json
from pathlib import Path

from danlu.recipes.lab_stages import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "grpo_variants.py"


def _fake_run(run_dir: Path, seed: int, before: float, after: float) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"seed": seed, "loss": run_dir.name}))
    rows = [{"step": s, "reward": 0.1 * s, "kl": 0.01 * s} for s in range(1, 5)]
    rows += [{"step": 0, "eval_accuracy": before}, {"step": 4, "eval_accuracy": after}]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_merge_reports_each_variants_gain_over_seeds(tmp_path):
    gains = {"grpo": [0.12, 0.20, 0.16], "dapo": [0.05, 0.15, 0.10]}
    for seed in range(3):
        for variant, g in gains.items():
            _fake_run(tmp_path / f"s{seed}" / variant, seed, 0.30, 0.30 + g[seed])
    out = tmp_path / "merged"
    assert (
        load_script(SCRIPT).main(["--merge", *(str(tmp_path / f"s{s}") for s in range(3)), "--out", str(out)])
        == 0
    )
    summary = json.loads((out / "grpo_variants.json").read_text())
    assert set(summary["results"]) == {"grpo", "dapo"}
    grpo, dapo = summary["results"]["grpo"], summary["results"]["dapo"]
    assert grpo["seeds"] == [0, 1, 2]
    assert abs(grpo["gain_mean"] - 0.16) < 1e-9 and abs(grpo["gain_std"] - 0.04) < 1e-9
    assert abs(dapo["gain_min"] - 0.05) < 1e-9 and abs(dapo["gain_max"] - 0.15) < 1e-9
    assert abs(grpo["final_kl"][0] - 0.04) < 1e-9
    assert (out / "grpo_variants.png").stat().st_size > 0


def test_a_variant_runs_end_to_end_with_the_demos_recipe(make_gpt, tokenizer, tmp_path):
    """Two rounds of DAPO from a tiny checkpoint on a tiny world: the run's config is the demo's recipe
    (align_stages.grpo_config) with DAPO's β = 0, and the summary scores the 100-or-fewer held-out sums."""
    from danlu.data.world import write_world
    from danlu.models.checkpoints import save_model
    from danlu.recipes.align_stages import grpo_config

    world = tmp_path / "world"
    write_world(world, seed=0, size="tiny")
    ck = save_model(make_gpt(), tmp_path / "model", tokenizer=tokenizer)
    out = tmp_path / "run"
    argv = [
        "--model",
        str(ck),
        "--world",
        str(world),
        "--out",
        str(out),
        "--variants",
        "dapo",
        "--steps",
        "2",
        "--sampled",
        "2",
    ]
    assert load_script(SCRIPT).main(argv) == 0
    summary = json.loads((out / "grpo_variants.json").read_text())
    dapo = summary["results"]["dapo"]
    assert dapo["config"]["beta"] == 0.0 and dapo["config"]["loss"] == "dapo"
    expected = grpo_config(2, 0, "cpu", loss="dapo", lr=4e-5)
    assert dapo["config"]["inner_epochs"] == expected.inner_epochs == 2
    assert dapo["config"]["prompts_per_step"] == expected.prompts_per_step
    assert 0 <= dapo["accuracy"] <= 1 and dapo["steps"] == 2 and summary["heldout_items"] > 0
    assert (out / "grpo_variants.png").stat().st_size > 0
    sampled = dapo["sampled"]  # 2 answers sampled per held-out sum, before and after
    for when in ("sft", "after"):
        assert sampled[when]["k"] == 2 and 0 <= sampled[when]["accuracy"] <= sampled[when]["pass_at_k"] <= 1
