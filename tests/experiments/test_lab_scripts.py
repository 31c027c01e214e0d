"""experiments/decoding.py, inside.py and t5_vs_bart.py end to end at a tiny scale (a tiny GPT or
Transformer, a few steps): the paths, files and metrics' ranges, not the figures the full runs report."""

import json

from danlu.models.checkpoints import save_model


def test_decoding_script(script, make_gpt, tokenizer, world_dir, tmp_path):
    ck = save_model(make_gpt(), tmp_path / "model", tokenizer=tokenizer)
    out = tmp_path / "run"
    methods = ["greedy", "beam 4", "repetition 1.3", "no-repeat 3-gram", "top-p 0.9", "contrastive"]
    code = script("decoding").main(["--model", str(ck), "--world", str(world_dir), "--out", str(out),
                                    "--prompts", "3", "--max-new-tokens", "8", "--amateur-steps", "2",
                                    "--block-size", "32", "--threads", "1", "--methods", *methods])  # fmt: skip
    assert code == 0 and (out / "decoding.png").stat().st_size > 0
    report = json.loads((out / "decoding.json").read_text())
    assert set(report["results"]) == {"reference (held-out text)", *methods}
    for r in report["results"].values():
        assert 0 <= r["distinct_2"] <= 1 and 0 <= r["repetition_4"] <= 1 and r["perplexity"] > 1
    # the engine's no-repeat processor and the metric agree: no token 3-gram twice in any sample
    assert report["results"]["no-repeat 3-gram"]["token_repetition_3"] == 0
    assert report["results"]["reference (held-out text)"]["mean_tokens"] == 8


def test_story_prompts_are_openings_of_held_out_stories(script, world_dir):
    prompts, rests = script("decoding").story_prompts(world_dir, 5)
    assert len(prompts) == len(rests) > 0 and all(r.startswith(" ") for r in rests)
    assert prompts[0].startswith("This is a story about ") and all(p.endswith(".") for p in prompts)


def test_inside_script(script, make_gpt, tokenizer, world_dir, tmp_path):
    ck = save_model(make_gpt(), tmp_path / "model", tokenizer=tokenizer)
    out = tmp_path / "run"
    assert (
        script("inside").main(
            ["--model", str(ck), "--world", str(world_dir), "--out", str(out), "--threads", "1"]
        )
        == 0
    )
    report = json.loads((out / "inside.json").read_text())
    assert report["fact"]["prompt"].startswith("The capital of ") and not report["fact"]["heldout"]
    assert len(report["per_layer"]["prob"]) == 3  # embeddings + 2 layers
    assert all(r >= 1 for r in report["per_layer"]["rank"])
    assert (
        len(report["attention"]) == 2 and (out / "lens.png").is_file() and (out / "attention.png").is_file()
    )


def test_t5_vs_bart_script(script, world_dir, tmp_path):
    out = tmp_path / "run"
    code = script("t5_vs_bart").main(["--world", str(world_dir), "--out", str(out), "--pretrain-steps", "2",
                                      "--finetune-steps", "2", "--pairs", "24", "--texts", "40", "--test", "4",
                                      "--batch-size", "4", "--threads", "1"])  # fmt: skip
    assert code == 0 and (out / "t5_vs_bart.png").is_file()
    results = json.loads((out / "t5_vs_bart.json").read_text())["results"]
    assert set(results) == {"none", "bart", "t5"}
    assert all(0 <= r["mean"]["bleu_beam4"] <= 100 and len(r["runs"]) == 1 for r in results.values())
    assert "pretrain_final_val_loss" in results["t5"]["mean"]
    assert "pretrain_final_val_loss" not in results["none"]["mean"]
