"""The demo's alignment stages end to end at toy scale: each runs, reports, and hands its model on."""

import argparse
import json

from danlu.data.world import write_world
from danlu.recipes import align_stages as ds
from danlu.recipes.demo import DemoContext


def test_all_alignment_stages_run_and_report(tmp_path, tokenizer, make_gpt):
    write_world(tmp_path / "world", seed=0, size="tiny")
    args = argparse.Namespace(seed=0, size="tiny", device="cpu", quiet=True, sft_steps=4, reward_steps=2,
                              dpo_steps=2, ppo_steps=1, grpo_steps=1)  # fmt: skip
    ctx = DemoContext(out=tmp_path, args=args)
    ctx.state.update(world_dir=tmp_path / "world", tokenizer=tokenizer, model=make_gpt())
    # PPO first: it needs SFT and the reward model, and runs them itself.
    ctx.metrics["ppo"] = ds.stage_ppo(ctx)
    assert list(ctx.metrics) == ["sft", "reward", "ppo"]
    for name in ("dpo", "grpo"):
        ctx.metrics[name] = ds.STAGE_FUNCTIONS[name](ctx)
    m = ctx.metrics
    assert 0 <= m["sft"]["em_fact"] <= 1 and "fact_heldout" in m["sft"]["exact_match"]["sft"]
    assert 0 <= m["reward"]["pairwise_accuracy"] <= 1
    assert m["dpo"]["preference_accuracy_sft"] == 0.5
    assert {"score_sft", "score", "greedy_score", "kl_per_token", "kl_bound"} <= set(m["ppo"])
    assert 0 <= m["grpo"]["arith_accuracy"] <= 1
    report = "\n".join(ctx.sections)
    for heading in ("Supervised fine-tuning", "Reward model", "DPO", "RLHF-PPO", "GRPO"):
        assert heading in report
    for png in ("stages.png", "sft/loss.png", "ppo/ppo_curves.png", "grpo/grpo_curves.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert set(ctx.state["em_by_model"]) == {"pretrained", "SFT", "PPO", "DPO", "GRPO"}
    json.dumps(m)  # metrics.json must be able to hold them


def test_the_arithmetic_pool_leaves_out_the_held_out_problems():
    held = [{"instruction": "What is 2 + 16?"}, {"instruction": "11 * 4等于几？"}]
    pool = ds.arithmetic_pool(held)
    asked = {r["instruction"] for r in pool}
    assert "What is 2 + 16?" not in asked and "2 + 16等于几？" not in asked and "11 * 4等于几？" not in asked
    assert "What is 16 + 2?" in asked and all(r["answer"].isdigit() for r in pool)
    assert len(pool) == 2 * (21 * 21 + 21 * 22 // 2 + 13 * 13 - 2)
