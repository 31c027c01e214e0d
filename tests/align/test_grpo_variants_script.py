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
