"""experiments/smollm2_sft.py, issue 19's acceptance run, end to end at a small scale: Alpaca records of world
facts, `danlu sft --lora` (and QLoRA) in subprocesses, `danlu merge-lora`, scores, `danlu serve` + openai.

The fast test runs the whole path on a tiny danlu GPT; the slow one on the real SmolLM2 GGUF (20 facts, a few
steps: it checks the path, not the figures, which the full run of the script reports)."""

import importlib.util
import json
from pathlib import Path

import pytest

from danlu.models.checkpoints import save_model

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "smollm2_sft.py"


def script():
    spec = importlib.util.spec_from_file_location("smollm2_sft", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fact_sets_are_alpaca_records_and_their_paraphrases():
    trained, para = script().fact_sets(30, world_size="tiny")
    assert len(trained) == len(para) == 30
    assert len({r["instruction"] for r in trained}) == 30
    for t, p in zip(trained, para):
        assert set(t) >= {"instruction", "input", "output"} and t["output"] == p["output"]
        assert p["instruction"].startswith("Complete the sentence: ") and p["instruction"] != t["instruction"]
        assert t["output"].startswith(p["instruction"].removeprefix("Complete the sentence: "))
        assert t["answer"] in t["output"]


def test_the_whole_path_on_a_tiny_model(make_gpt, tokenizer, tmp_path):
    ck = save_model(make_gpt(n_embd=64), tmp_path / "base", tokenizer=tokenizer)
    out = tmp_path / "run"
    code = script().main(["--model", str(ck), "--out", str(out), "--n-train", "6", "--baseline-n", "2",
                          "--max-steps", "2", "--batch-size", "2", "--block-size", "128", "--top-layers", "1",
                          "--world-size", "tiny", "--serve-n", "2", "--max-new-tokens", "4"])  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    for name in ("lora", "qlora"):
        r = results[name]
        assert 0 <= r["trained"] <= 1 and 0 <= r["paraphrase"] <= 1
        assert r["sft"]["peak_rss_mb"] > 0 and r["sft"]["wall_s"] > 0
        conf = json.loads((out / name / "adapter" / "adapter_config.json").read_text())
        assert conf["base_model_name_or_path"] == str(ck)
        assert conf["target_modules"] == [
            "down_proj",
            "gate_proj",
            "k_proj",
            "o_proj",
            "q_proj",
            "up_proj",
            "v_proj",
        ]
        assert (out / name / "merged" / "model.safetensors").is_file()
    assert results["serve"]["n"] == 2 and 0 <= results["serve"]["exact_match"] <= 1
    # the one summary line the acceptance rerun reads: EM, paraphrase EM, wall / CPU time, peak RSS per run
    summary = results["summary"]
    for name in ("lora", "qlora"):
        got = summary[name]
        assert (got["em"], got["paraphrase_em"]) == (results[name]["trained"], results[name]["paraphrase"])
        assert got["peak_rss_mb"] == results[name]["sft"]["peak_rss_mb"] and got["sft_cpu_s"] > 0
        assert got["steps_per_s"] > 0
    assert summary["serve_em"] == results["serve"]["exact_match"] and summary["script_wall_s"] > 0


@pytest.mark.slow
def test_the_path_on_smollm2(smollm2_gguf, tmp_path):
    out = tmp_path / "run"
    code = script().main(["--model", str(smollm2_gguf), "--out", str(out), "--n-train", "20", "--baseline-n", "4",
                          "--eval-n", "4", "--max-steps", "2", "--batch-size", "2", "--block-size", "128",
                          "--top-layers", "2", "--no-qlora", "--serve-n", "2", "--max-new-tokens", "12"])  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["lora"]["merged_mb"] < 300  # f16, the base's dtype, not 538 MB of f32
    assert "error" not in results["serve"]
