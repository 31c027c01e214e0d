"""DPO: the loss against the formula computed independently, sequence log-probs, bad preference data, and a
tiny run whose implicit reward learns to rank chosen above rejected."""

import json
import math

import pytest
import torch

from danlu.align.dpo import DPOModel, dpo, dpo_loss, encode_pairs, pair_batch, reference_log_probs
from danlu.errors import DanluError
from danlu.models.checkpoints import save_model
from danlu.train.loop import TrainConfig


def test_dpo_loss_equals_the_formula_on_random_tensors():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(64, generator=g, dtype=torch.float64) * 5 - 20 for _ in range(4))
    beta = 0.3
    loss, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta)
    # −log σ(z) = log(1 + e^{−z}), element by element in plain Python floats.
    expected = 0.0
    for i in range(64):
        z = beta * ((pc[i].item() - rc[i].item()) - (pr[i].item() - rr[i].item()))
        expected += math.log1p(math.exp(-z))
    assert loss.item() == pytest.approx(expected / 64, rel=1e-12)
    assert torch.allclose(chosen_r, beta * (pc - rc)) and torch.allclose(rejected_r, beta * (pr - rr))


def test_the_wrapped_model_scores_summed_response_log_probs(tokenizer, make_gpt):
    model = make_gpt().eval()
    records = [{"prompt": "What is 2 + 3?", "chosen": "5.", "rejected": "6."}]
    pairs = encode_pairs(records, tokenizer, 64)
    batch = pair_batch(pairs, 0)
    ref = reference_log_probs(model, pairs, 0)  # (1, 2)
    # By hand: Σ over the reply tokens of log softmax at the previous position.
    for ex, col in [(pairs[0][0], 0), (pairs[0][1], 1)]:
        ids = torch.tensor([ex.input_ids])
        with torch.no_grad():
            logp = model(ids).logits.log_softmax(-1)[0]
        total = sum(logp[t - 1, ids[0, t]].item() for t in range(1, len(ex.labels)) if ex.labels[t] != -100)
        assert ref[0, col].item() == pytest.approx(total, abs=1e-4)
    out = DPOModel(model, beta=0.5)(batch["input_ids"], batch["labels"], ref)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-5)  # π = π_ref: margin 0, loss log 2


@pytest.mark.parametrize(
    "record, message",
    [
        ({"prompt": "Q?", "chosen": "A."}, "field 'rejected' is missing"),
        (
            {"prompt": "Q?", "chosen": "A.", "rejected": "A."},
            "fields 'chosen' and 'rejected' are the same text",
        ),
        ({"prompt": "Q?", "chosen": "A.", "rejected": "  "}, "field 'rejected' is empty"),
        ({"prompt": "Q?", "chosen": "", "rejected": "B."}, "field 'chosen' is empty"),
    ],
)
def test_bad_preference_records_are_clear_errors(tokenizer, make_gpt, tmp_path, record, message):
    good = {"prompt": "Q?", "chosen": "A.", "rejected": "B."}
    with pytest.raises(DanluError, match=f"record 2: {message}"):
        dpo(make_gpt(), tokenizer, [good, record], tmp_path, TrainConfig(max_steps=1, show_progress=False))


def test_tiny_dpo_learns_to_prefer_the_chosen_answers(world, tokenizer, make_gpt, tmp_path):
    records = world.preference_records("train")[:24]
    cfg = TrainConfig(max_steps=30, batch_size=8, block_size=96, lr=3e-3, warmup_steps=3, eval_interval=30,
                      eval_batches=1, show_progress=False, weight_decay=0.0)  # fmt: skip
    _, summary = dpo(make_gpt(), tokenizer, records, tmp_path / "dpo", cfg, beta=0.1, eval_records=records,
                     val_records=records[:8])  # fmt: skip
    assert summary["before"]["preference_accuracy"] == 0.5  # π = π_ref: every implicit reward is 0, all ties
    assert summary["after"]["preference_accuracy"] >= 0.9
    assert summary["after"]["reward_margin"] > 0
    assert summary["final_val_loss"] < summary["first_val_loss"]
    logged = [json.loads(x) for x in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert any("reward_margin" in r and "preference_accuracy" in r for r in logged)


def test_dpo_cli_with_lora_writes_the_adapter_and_merges_only_when_asked(
    world, tokenizer, make_gpt, tmp_path, cli, capsys
):
    ck = save_model(make_gpt(), tmp_path / "sft", tokenizer=tokenizer)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in world.preference_records("train")[:12]))
    assert cli(["dpo", "--model", str(ck), "--data", str(data), "--out", str(tmp_path / "o"), "--lora",
                "--max-steps", "2", "--batch-size", "4", "--lr", "1e-2", "--quiet"]) == 0  # fmt: skip
    conf = json.loads((tmp_path / "o" / "adapter" / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == str(ck)
    # As `danlu sft --lora`: the adapter is the result, no implicit merge; OUT/checkpoint is training state.
    assert not (tmp_path / "o" / "merged").exists()
    assert not (tmp_path / "o" / "checkpoint" / "model.safetensors").exists()
    assert (tmp_path / "o" / "checkpoint" / "adapter_model.safetensors").is_file()
    assert f"danlu merge-lora --model {ck} --adapter {tmp_path / 'o' / 'adapter'}" in capsys.readouterr().out
    # --merge also writes the merged model, equal to what `danlu merge-lora` makes of the same adapter.
    assert cli(["dpo", "--model", str(ck), "--data", str(data), "--out", str(tmp_path / "m"), "--lora", "--merge",
                "--max-steps", "2", "--batch-size", "4", "--lr", "1e-2", "--quiet"]) == 0  # fmt: skip
    assert cli(["merge-lora", "--model", str(ck), "--adapter", str(tmp_path / "m" / "adapter"),
                "--out", str(tmp_path / "by_hand")]) == 0  # fmt: skip
    from danlu.models.checkpoints import load_model

    merged = load_model(tmp_path / "m" / "merged").state_dict()
    by_hand, base = load_model(tmp_path / "by_hand").state_dict(), load_model(ck).state_dict()
    assert any(not torch.equal(merged[k], base[k]) for k in base)  # the adapter trained and was folded in
    assert all(torch.allclose(merged[k], by_hand[k], atol=1e-6) for k in base)
    assert cli(["dpo", "--model", str(ck), "--data", str(data), "--out", str(tmp_path / "x"), "--merge"]) == 2
    assert "add --lora" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Q?", "chosen": "A."}) + "\n")
    assert cli(["dpo", "--model", str(ck), "--data", str(bad), "--out", str(tmp_path / "b")]) == 2
