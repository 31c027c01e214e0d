"""Reward model: the pairwise loss, rankings expanded to all pairs, scores read at the last real token, a tiny
training run that ranks held-in comparisons, save / load."""

import json
import math

import pytest
import torch

from danlu.align.reward import (
    EncodedComparison,
    RewardModel,
    collate_comparisons,
    comparisons,
    pairwise_accuracy,
    pairwise_loss,
    ranking_pairs,
    train_reward_model,
)
from danlu.errors import DanluError
from danlu.models.checkpoints import save_model
from danlu.train.loop import TrainConfig


def test_pairwise_loss_is_minus_log_sigmoid_of_the_margin():
    better, worse = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    expected = sum(-math.log(1 / (1 + math.exp(-(b - w)))) for b, w in zip([2.0, 0, -1], [1.0, 0, 1])) / 3
    assert pairwise_loss(better, worse).item() == pytest.approx(expected, rel=1e-6)


def test_a_ranking_of_k_gives_all_k_choose_2_pairs():
    assert ranking_pairs(4) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    items = [
        EncodedComparison([([1, 2], 1), ([3], 1), ([4, 5, 6], 2)]),
        EncodedComparison([([7], 1), ([8, 9], 1)]),
    ]
    batch = collate_comparisons(items, pad_id=0)
    assert batch["input_ids"].shape == (5, 3)
    assert batch["better"].tolist() == [0, 0, 1, 3] and batch["worse"].tolist() == [1, 2, 2, 4]
    assert batch["attention_mask"].sum(1).tolist() == [2, 1, 3, 1, 2]
    assert batch["response_mask"].tolist()[2] == [0, 1, 1] and batch["response_mask"].tolist()[0] == [0, 1, 0]


def test_records_without_a_rejected_or_responses_field_are_errors():
    assert comparisons([{"prompt": "q", "chosen": "a", "rejected": "b"}]) == [("q", ["a", "b"])]
    with pytest.raises(DanluError, match="record 1 is neither a preference pair"):
        comparisons([{"prompt": "q", "chosen": "a"}])


@pytest.mark.parametrize("likelihood_feature", [False, True])
def test_score_is_read_at_the_last_real_token_whatever_the_padding(make_gpt, likelihood_feature):
    rm = RewardModel(make_gpt(), likelihood_feature).eval()
    with torch.no_grad():
        rm.head.weight.normal_()  # a non-zero head
    ids, answer = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[0, 0, 1, 1]])
    with torch.no_grad():
        alone = rm(ids, response_mask=answer)
        padded = rm(torch.tensor([[5, 6, 7, 8, 0, 0]]), torch.tensor([[1, 1, 1, 1, 0, 0]]),
                    response_mask=torch.tensor([[0, 0, 1, 1, 0, 0]]))  # fmt: skip
        assert torch.allclose(alone, padded, atol=1e-5)
        head_only = rm.values(ids)[:, -1]
        if likelihood_feature:  # + α · mean log p of the answer tokens 7, 8
            logp = rm.backbone(ids).logits.log_softmax(-1)[0]
            mean_logp = (logp[1, 7] + logp[2, 8]) / 2
            assert torch.allclose(alone, head_only + rm.alpha * mean_logp, atol=1e-5)
        else:
            assert torch.allclose(alone, head_only)


def test_a_fresh_likelihood_reward_model_ranks_by_the_answer_likelihood(make_gpt):
    rm = RewardModel(make_gpt()).eval()
    assert rm.head.weight.abs().sum() == 0 and rm.alpha.item() == 1.0
    with pytest.raises(DanluError, match="pass response_mask"):
        rm(torch.tensor([[1, 2, 3]]))


def test_tiny_reward_model_learns_the_rankings_and_saves(world, tokenizer, make_gpt, tmp_path):
    records = world.ranking_records("train")[:16]
    cfg = TrainConfig(max_steps=40, batch_size=8, block_size=96, lr=3e-3, warmup_steps=3, eval_interval=40,
                      eval_batches=1, show_progress=False, weight_decay=0.0)  # fmt: skip
    rm, summary = train_reward_model(make_gpt(), tokenizer, records, tmp_path / "rm", cfg, val_records=records,
                                     eval_records=records)  # fmt: skip
    assert summary["final_val_loss"] < 0.5 * summary["first_val_loss"]
    acc = pairwise_accuracy(rm, tokenizer, records)
    assert acc["pairs"] == 16 * 6 and acc["pairwise_accuracy"] >= 0.9
    again = RewardModel.load(tmp_path / "rm" / "checkpoint")
    x, answer = torch.randint(0, tokenizer.vocab_size, (2, 9)), torch.tensor([[0] * 5 + [1] * 4] * 2)
    with torch.no_grad():
        assert torch.allclose(again(x, response_mask=answer), rm(x, response_mask=answer), atol=1e-6)
    assert again.likelihood_feature and again.alpha.item() == pytest.approx(rm.alpha.item())


def test_reward_cli(world, tokenizer, make_gpt, tmp_path, cli, capsys):
    ck = save_model(make_gpt(), tmp_path / "sft", tokenizer=tokenizer)
    data = tmp_path / "rank.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in world.ranking_records("train")[:8]))
    assert cli(["reward", "--model", str(ck), "--data", str(data), "--eval-data", str(data), "--out",
                str(tmp_path / "rm"), "--max-steps", "2", "--batch-size", "4", "--quiet"]) == 0  # fmt: skip
    assert (tmp_path / "rm" / "checkpoint" / "reward_head.safetensors").is_file()
    assert '"pairwise_accuracy"' in capsys.readouterr().out
