"""`danlu demo --stages lab`: the group's wiring (stage names, what it needs first) and its plumbing (a script's
entry called, its JSON into metrics, its figure and section into the report, a missing or failing script
reported), on fake scripts and on experiments/inside.py and ppo_seeds.py at tiny settings: not the figures."""

import argparse
import json
from pathlib import Path

import pytest

from danlu.align.reward import RewardModel
from danlu.models.checkpoints import save_model
from danlu.recipes import lab_stages
from danlu.recipes.context import DemoContext
from danlu.recipes.demo import (
    LAB_EXPERIMENTS,
    PRETRAIN_STEPS_ALIGN,
    STAGE_GROUPS,
    default_pretrain_steps,
    resolve_stages,
    write_report,
)


def test_lab_group_resolves_to_every_experiment_after_sft_and_the_reward_model():
    stages = resolve_stages("lab")
    assert stages[:5] == ["world", "tokenizer", "pretrain", "sft", "reward"]
    assert stages[5:] == [f"lab_{name}" for name in LAB_EXPERIMENTS]
    assert default_pretrain_steps(stages) == PRETRAIN_STEPS_ALIGN
    assert not any(s.startswith("lab_") for s in STAGE_GROUPS["all"])  # the lab is its own half hour
    assert resolve_stages("lab_inside") == ["world", "tokenizer", "pretrain", "lab_inside"]


def test_every_lab_experiment_has_settings_and_a_script(experiments):
    assert tuple(lab_stages.EXPERIMENTS) == LAB_EXPERIMENTS
    # overopt.py is another helper's and may land later: the stage says so when it is absent
    assert all((experiments / f"{n}.py").is_file() for n in LAB_EXPERIMENTS if n != "overopt")


def _ctx(out: Path) -> DemoContext:
    return DemoContext(out=out, args=argparse.Namespace(seed=0, device="cpu", quiet=True))


MAIN_SCRIPT = """
import json, sys
from pathlib import Path
def main(argv):
    out = Path(argv[argv.index("--out") + 1])
    (out / "decoding.json").write_text(json.dumps({"settings": {"steps": 3}, "results": {"greedy": {"distinct_2": 0.25, "curve": list(range(99))}}}))
    (out / "decoding.png").write_bytes(b"png")
    (out / "run").mkdir(exist_ok=True)
    (out / "run" / "loss.png").write_bytes(b"png")  # a run's curve: not the experiment's figure
    return 0
"""
RUN_SCRIPT = """
from pathlib import Path
def run(out_dir, quick=False, seed=None, unknown_to_lab=1):
    (out_dir / "f.png").write_bytes(b"png")
    return {"numbers": {"gold_peak_kl": 0.5, "quick": quick, "seed": seed}, "figure": str(out_dir / "f.png"),
            "section": f"## Own title\\n\\nThe gold reward peaks at KL 0.5.\\n\\n![F]({out_dir / 'f.png'})\\n"}
"""


def test_lab_plumbing_on_fake_scripts(tmp_path, monkeypatch):
    scripts = tmp_path / "experiments"
    scripts.mkdir()
    (scripts / "decoding.py").write_text(MAIN_SCRIPT)
    (scripts / "overopt.py").write_text(RUN_SCRIPT)
    (scripts / "inside.py").write_text("def main(argv):\n    raise ValueError('no model here')\n")
    monkeypatch.setenv("DANLU_EXPERIMENTS", str(scripts))
    ctx = _ctx(tmp_path / "demo")
    ctx.state["sft_model"] = object()  # overopt needs the SFT stage: already run
    for name in ("decoding", "overopt", "inside", "cot"):
        ctx.metrics[f"lab_{name}"] = lab_stages.run_experiment(ctx, name)
    write_report(ctx, 1.0)

    m = ctx.metrics
    assert m["lab_decoding"]["numbers"] == {
        "results.greedy.distinct_2": 0.25
    }  # the long curve stays in its JSON
    assert m["lab_decoding"]["figures"] == ["lab/decoding/decoding.png"]
    assert m["lab_overopt"]["numbers"] == {"gold_peak_kl": 0.5, "seed": 0}  # run(out_dir, quick, seed) called
    assert m["lab_inside"]["failed"] == "ValueError: no model here"
    assert m["lab_cot"] == {"missing": True}
    report = (ctx.out / "report.md").read_text()
    assert "![decoding](lab/decoding/decoding.png)" in report and "The gold reward peaks at KL 0.5." in report
    assert "Own title" not in report  # the script's heading gives way to the lab's numbered one
    # the script's own image line (an absolute path) gives way to the lab's link relative to report.md
    assert (
        report.count("f.png") == 1
        and "![overopt](lab/overopt/f.png)" in report
        and f"]({tmp_path}" not in report
    )
    assert "Failed: `ValueError: no model here`" in report and "cot.py` is not in this tree" in report
    saved = json.loads((ctx.out / "metrics.json").read_text())["stages"]
    assert saved["lab_overopt"]["figures"] == ["lab/overopt/f.png"]


def test_lab_stage_runs_a_real_script(make_gpt, tokenizer, world_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("DANLU_EXPERIMENTS", raising=False)
    ctx = _ctx(tmp_path)
    save_model(make_gpt(), tmp_path / "pretrain" / "checkpoint", tokenizer=tokenizer)
    (tmp_path / "world").symlink_to(world_dir)
    result = lab_stages.run_experiment(ctx, "inside")
    assert "failed" not in result and set(result["figures"]) == {
        "lab/inside/attention.png",
        "lab/inside/lens.png",
    }
    assert 0 <= result["numbers"]["per_layer.prob[0]"] <= 1 and result["numbers"]["per_layer.rank[0]"] >= 1
    assert ctx.sections[0].startswith("## Lab: A look inside")


def test_ppo_seeds_script_at_tiny_settings(script, make_gpt, tokenizer, world_dir, tmp_path):
    ppo_seeds = script("ppo_seeds")
    sft = save_model(make_gpt(), tmp_path / "sft", tokenizer=tokenizer)
    RewardModel(make_gpt(seed=1)).save(tmp_path / "rm", tokenizer)
    out = tmp_path / "run"
    code = ppo_seeds.main(["--sft", str(sft), "--reward", str(tmp_path / "rm"), "--world", str(world_dir),
                                     "--out", str(out), "--seeds", "0", "1", "--steps", "1", "--eval-prompts", "4",
                                     "--samples", "1", "--threads", "1", "--set", "ppo_epochs=1", "whiten_scores=true",
                                     "--figure", str(tmp_path / "images" / "ppo.png"), "--temperatures", "0.5"])  # fmt: skip
    assert code == 0 and (out / "ppo_seeds.png").is_file()
    assert (tmp_path / "images" / "ppo.png").read_bytes() == (out / "ppo_seeds.png").read_bytes()
    report = json.loads((out / "ppo_seeds.json").read_text())
    (sharp,) = report["temperature_baseline"]
    assert sharp["temperature"] == 0.5 and sharp["kl_per_token"] >= 0 and 0 <= sharp["gold"] <= 1
    config = report["seeds"][0]["config"]
    assert config["ppo_epochs"] == 1 and config["whiten_scores"] is True
    assert [r["seed"] for r in report["seeds"]] == [0, 1] and report["eval_prompts"] == 4
    for r in report["seeds"]:
        assert 0 <= r["before"]["gold"] <= 1 and 0 <= r["after"]["greedy_gold"] <= 1
        assert r["before"]["kl_per_token"] == pytest.approx(0, abs=1e-5)  # SFT against itself
        assert r["holds"] == (
            r["gain"]["score"] > 0 and r["gain"]["gold"] > 0 and r["after"]["kl_per_token"] < 0.2
        )
    assert report["gain_gold"]["min"] <= report["gain_gold"]["mean"] <= report["gain_gold"]["max"]
    merged = tmp_path / "merged"  # seeds run in parallel processes, one summary
    assert ppo_seeds.main(["--merge", str(out), str(out), "--out", str(merged)]) == 0
    both = json.loads((merged / "ppo_seeds.json").read_text())
    assert [r["seed"] for r in both["seeds"]] == [0, 1, 0, 1] and both["gain_gold"]["sd"] >= 0


def test_knowledge_verdict_states_the_bar_and_chance():
    from danlu.recipes.demo import knowledge_section

    probe = {"n_items": {"heldin": 50, "heldout": 50, "arithmetic": 50}, "chance": 0.25, "mc_heldin": 0.9,
             "mc_heldout": 0.3, "completion_heldin": 0.72, "completion_heldout": 0.02, "arithmetic": 0.4}  # fmt: skip
    text = knowledge_section(probe)
    assert "Held-in facts completed: 0.72** (bar ≥ 0.6: met)" in text
    assert "0.30 is within two standard errors (±0.12) of chance 0.25" in text
    text = knowledge_section(probe | {"completion_heldin": 0.41, "mc_heldout": 0.5})
    assert "(bar ≥ 0.6: not met)" in text and "outside two standard errors" in text


def test_lab_full_is_not_a_resume_setting():
    # a run started before --lab-full existed saved no lab_full: resuming it must not call the settings changed
    from danlu.recipes.demo import _settings

    assert _settings(argparse.Namespace(seed=0, lab_full=True)) == {"seed": 0}


def test_a_script_with_a_dataclass_loads(tmp_path):
    # dataclasses look their module up in sys.modules while the class is built (experiments/overopt.py's
    # Settings): loading a script without registering it failed with "'NoneType' has no attribute '__dict__'"
    script = tmp_path / "with_settings.py"
    script.write_text(
        "from dataclasses import dataclass\n\n@dataclass\nclass Settings:\n    steps: int = 3\n\n"
        "def run(out_dir, quick=False):\n    return {'steps': Settings().steps}\n",
        encoding="utf-8",
    )
    module = lab_stages.load_script(script)
    assert module.run(tmp_path) == {"steps": 3}


def test_run_entries_get_paths_where_they_take_paths():
    # overopt.run's sft_model/tokenizer are loaded objects: the lab hands it the checkpoint's path instead
    i = lab_stages.LabInputs(
        out_dir=Path("o/lab/overopt"), model=Path("o/pretrain/checkpoint"), world=Path("o/world"),
        tokenizer=Path("o/tokenizer"), sft_model=Path("o/sft/checkpoint"), reward_model=None, seed=0,
        device="cpu", threads=1, quick=True,
    )  # fmt: skip
    kwargs = lab_stages.EXPERIMENTS["overopt"].run_kwargs(i)
    assert kwargs["sft_model"] is None and kwargs["tokenizer"] is None
    assert kwargs["model_path"] == i.sft_model and kwargs["world_dir"] == i.world
    # icl.py finds lab_scaling's runs in the folder it is handed (or none, if that stage has not run)
    assert lab_stages.EXPERIMENTS["icl"].run_kwargs(i) == {
        "runs": Path("o/lab/scaling"),
        "models": [("demo", i.model)],
    }


def test_ppo_seeds_set_rejects_unknown_or_mistyped_fields(script):
    ppo_seeds = script("ppo_seeds")
    for bad in (["nope=1"], ["ppo_epochs=two"], ["lr"]):
        with pytest.raises(SystemExit):
            ppo_seeds.main(["--set", *bad, "--merge", "x"])
