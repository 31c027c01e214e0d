"""Rollouts (masks, log-probs, padding), the PPO and GRPO losses, and short PPO / GRPO runs end to end."""

import json

import pytest
import torch

from danlu.align.configs import GRPOConfig, PPOConfig
from danlu.align.grpo import grpo, grpo_loss
from danlu.align.ppo import AdaptiveKLController, actor_loss, ppo, value_loss
from danlu.align.reward import RewardModel
from danlu.align.rollout import sample, sequence_log_probs, token_log_probs
from danlu.errors import DanluError
from danlu.models.checkpoints import save_model
from danlu.tune.sft import prompt_text


def _chat(tokenizer, questions):
    return [prompt_text({"instruction": q, "output": ""}, tokenizer) for q in questions]


def test_rollout_masks_and_log_probs_do_not_depend_on_padding(tokenizer, make_gpt):
    model = make_gpt().eval()
    prompts = _chat(tokenizer, ["What is 2 + 3?", "What pet does Voyu have? Answer in one word please."])
    im_end = tokenizer.token_to_id("<|im_end|>")
    r = sample(model, tokenizer, prompts, max_new_tokens=6, temperature=1.0, seed=0, stop_ids=[im_end, 0])
    B, T = r.input_ids.shape
    assert r.prompt_len == max(len(tokenizer.encode(p)) for p in prompts)
    assert (r.response_mask[:, : r.prompt_len] == 0).all() and r.response_mask[:, r.prompt_len].all()
    assert r.action_mask.shape == (B, T - 1)
    with torch.no_grad():
        batched = sequence_log_probs(model, r)
        for i in range(B):  # each row alone, without padding, scores its tokens the same
            keep = r.attention_mask[i].bool()
            ids = r.input_ids[i][keep][None]
            alone = token_log_probs(model(ids).logits, ids)[0]
            n = ids.shape[1] - 1
            grid = batched[i][keep[1:]][-n:]
            assert torch.allclose(grid, alone, atol=1e-4)
    for i, text in enumerate(r.texts):
        answer_ids = r.input_ids[i, r.prompt_len :][r.response_mask[i, r.prompt_len :].bool()].tolist()
        assert (
            tokenizer.decode([t for t in answer_ids if t not in (im_end, 0)], skip_special_tokens=True)
            == text
        )


def test_actor_loss_clips_the_ratio():
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    mask = torch.ones(1, 3)
    old = torch.zeros(1, 3)
    loss, clipfrac = actor_loss(torch.zeros(1, 3), old, adv, mask, 0.2)
    assert loss.item() == pytest.approx(-1 / 3) and clipfrac.item() == 0  # ratio 1: the notes' −Adv·log P
    new = torch.log(torch.tensor([[2.0, 2.0, 0.5]])).requires_grad_(True)
    loss, clipfrac = actor_loss(new, old, adv, mask, 0.2)
    # ratio 2 with Adv > 0 is capped at 1.2 (no gradient); with Adv < 0 the unclipped 2 counts; 0.5 with Adv > 0
    # is below the window and keeps its gradient (pessimistic bound).
    assert loss.item() == pytest.approx((-1.2 + 2.0 - 0.5) / 3)
    loss.backward()
    assert new.grad[0, 0] == 0 and new.grad[0, 1] != 0 and new.grad[0, 2] != 0
    assert clipfrac.item() == pytest.approx(1 / 3)


def test_value_loss_clips_around_the_old_values():
    old, ret, mask = torch.zeros(1, 2), torch.tensor([[1.0, 1.0]]), torch.ones(1, 2)
    v = torch.tensor([[0.9, 0.1]])
    # max((v − G)², (clip(v, ±0.2) − G)²): 0.9 -> max(0.01, 0.64); 0.1 -> max(0.81, 0.81)
    assert value_loss(v, old, ret, mask, 0.2).item() == pytest.approx(0.5 * (0.64 + 0.81) / 2)


def test_adaptive_kl_coefficient_moves_toward_the_target():
    ctl = AdaptiveKLController(0.1, target=1.0, horizon=100)
    ctl.update(kl=3.0, n=10)
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(kl=0.0, n=10)
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98)
    fixed = AdaptiveKLController(0.1, target=None, horizon=100)
    fixed.update(5.0, 10)
    assert fixed.value == 0.1


def test_grpo_loss_terms():
    lp = torch.tensor([[-1.0, -2.0], [-1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    loss, kl = grpo_loss(lp, lp.clone(), lp.clone(), adv, mask, beta=0.1, clip_range=0.2)
    assert kl.item() == 0 and loss.item() == pytest.approx(0.0)  # −mean(Adv) = 0, no KL
    ref = lp - 0.5
    loss, kl = grpo_loss(lp, lp.clone(), ref, adv, mask, beta=0.1, clip_range=0.2)
    k3 = torch.exp(torch.tensor(-0.5)) + 0.5 - 1  # π_ref/π − log(π_ref/π) − 1
    assert kl.item() == pytest.approx(k3.item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.1 * k3.item(), rel=1e-5)


def test_ppo_runs_and_starts_at_zero_kl(world, tokenizer, make_gpt, tmp_path):
    actor = make_gpt(seed=0)
    critic, reward_model = RewardModel(make_gpt(seed=1)), RewardModel(make_gpt(seed=1))
    prompts = _chat(tokenizer, [r["prompt"] for r in world.preference_records("train")[:8]])
    before = {k: v.clone() for k, v in actor.state_dict().items()}
    cfg = PPOConfig(
        max_steps=2, batch_size=4, minibatch_size=2, max_new_tokens=6, eval_interval=2, lr=1e-3, device="cpu"
    )
    summary = ppo(actor, critic, reward_model, tokenizer, prompts, tmp_path, cfg, eval_prompts=prompts[:3],
                  show_progress=False)  # fmt: skip
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and "eval_score" in records[0]
    assert records[1]["kl_per_token"] == pytest.approx(0.0, abs=1e-5)  # the first rollout: actor == reference
    assert {"score", "beta", "actor_loss", "critic_loss", "clipfrac"} <= set(records[1])
    assert (tmp_path / "ppo_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "eval_score_after" in summary
    assert any(not torch.equal(before[k], v) for k, v in actor.state_dict().items())


def test_ppo_on_the_norm_gains_changes_them_alone_and_leaves_requires_grad_as_it_was(world, tokenizer, make_gpt,
                                                                                      tmp_path):  # fmt: skip
    """actor_params="norms" (the demo's recipe): every norm gain may move, no other weight does; afterwards
    the actor is trainable everywhere again, as it was handed in."""
    from danlu.tune.norm_tuning import norm_parameters

    actor = make_gpt(seed=0)
    critic, reward_model = RewardModel(make_gpt(seed=1)), RewardModel(make_gpt(seed=1))
    prompts = _chat(tokenizer, [r["prompt"] for r in world.preference_records("train")[:8]])
    norms = {id(p) for p in norm_parameters(actor)}
    assert len(norms) == 2 * actor.config.n_layer + 1  # two per block and the final one
    before = {n: p.detach().clone() for n, p in actor.named_parameters()}
    cfg = PPOConfig(max_steps=2, batch_size=4, minibatch_size=2, max_new_tokens=6, eval_interval=0, lr=1e-2,
                    actor_params="norms", device="cpu")  # fmt: skip
    ppo(actor, critic, reward_model, tokenizer, prompts, tmp_path, cfg, show_progress=False)
    moved = {n for n, p in actor.named_parameters() if not torch.equal(before[n], p)}
    assert moved and moved <= {n for n, p in actor.named_parameters() if id(p) in norms}
    assert all(p.requires_grad for p in actor.parameters())
    with pytest.raises(DanluError, match="actor_params must be one of all, norms"):
        PPOConfig(actor_params="biases")
    from danlu.cli import main

    with pytest.raises(SystemExit):  # the flag offers the same choices (argparse's one error line, exit 2)
        main(["ppo", "--model", "m", "--reward-model", "r", "--data", "d", "--out", str(tmp_path / "o"),
              "--actor-params", "biases"])  # fmt: skip


def test_norm_tuning_needs_norms():
    from danlu.tune.norm_tuning import train_only_norms

    with pytest.raises(DanluError, match="has no norm layers"):
        with train_only_norms(torch.nn.Linear(2, 2)):
            pass


def test_ppo_and_grpo_configs_reject_bad_values():
    with pytest.raises(DanluError, match="minibatch_size"):
        PPOConfig(batch_size=4, minibatch_size=8)
    with pytest.raises(DanluError, match="group_size must be >= 2"):
        GRPOConfig(group_size=1)


def test_grpo_runs_with_the_verifiable_reward(world, tokenizer, make_gpt, tmp_path, cli):
    records = [r for r in world.sft_records("train") if r["kind"] == "arith"][:8]
    policy = make_gpt()
    cfg = GRPOConfig(
        max_steps=2, prompts_per_step=2, group_size=4, max_new_tokens=4, eval_interval=2, device="cpu"
    )
    summary = grpo(
        policy, tokenizer, records, tmp_path / "g", cfg, eval_records=records[:4], show_progress=False
    )
    logged = [json.loads(x) for x in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [0, 1, 2]
    assert 0 <= logged[1]["reward"] <= 1 and logged[1]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert 0 <= summary["eval_accuracy_after"] <= 1
    ck = save_model(policy, tmp_path / "p", tokenizer=tokenizer)
    data = tmp_path / "arith.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert cli(["grpo", "--model", str(ck), "--data", str(data), "--out", str(tmp_path / "cli"), "--max-steps", "1",
                "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "3", "--quiet"]) == 0  # fmt: skip
    assert (tmp_path / "cli" / "checkpoint" / "model.safetensors").is_file()


def test_ppo_cli_with_lora_trains_only_the_adapters(world, tokenizer, make_gpt, tmp_path, cli):
    sft = save_model(make_gpt(), tmp_path / "sft", tokenizer=tokenizer)
    RewardModel(make_gpt(seed=1)).save(tmp_path / "rm", tokenizer)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in world.preference_records("train")[:8]))
    assert cli(["ppo", "--model", str(sft), "--reward-model", str(tmp_path / "rm"), "--data", str(data),
                "--out", str(tmp_path / "ppo"), "--lora", "--lora-targets", "q", "v", "--max-steps", "1",
                "--batch-size", "4", "--minibatch-size", "4", "--max-new-tokens", "4", "--lr", "1e-2",
                "--device", "cpu", "--quiet", "--merge"]) == 0  # fmt: skip
    from danlu.models.checkpoints import load_model

    conf = json.loads((tmp_path / "ppo" / "adapter" / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == str(sft)  # the adapter is written, naming its base
    assert not (tmp_path / "ppo" / "checkpoint").exists()  # no implicit merged model in OUT/checkpoint
    before, after = load_model(sft).state_dict(), load_model(tmp_path / "ppo" / "merged").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith("attn.qkv.weight") for k in changed)  # only where the adapters merged


def test_ppo_whiten_scores_puts_the_whitened_score_on_the_last_token(world, tokenizer, make_gpt):
    from danlu.align.ppo import make_experience

    actor = make_gpt(seed=0).eval()
    critic, reward_model = RewardModel(make_gpt(seed=1)).eval(), RewardModel(make_gpt(seed=2)).eval()
    prompts = _chat(tokenizer, [r["prompt"] for r in world.preference_records("train")[:6]])
    for whiten_scores in (False, True):
        cfg = PPOConfig(
            batch_size=6,
            minibatch_size=6,
            max_new_tokens=5,
            whiten_scores=whiten_scores,
            lam=1.0,
            device="cpu",
        )
        exp = make_experience(actor, critic, reward_model, actor, tokenizer, prompts, cfg, beta=0.0, seed=3)
        # β = 0, γ = λ = 1: the return of the first action is the (whitened) score alone
        first = exp.rollout.action_mask.argmax(1)
        returns = exp.returns.gather(1, first[:, None])[:, 0]
        s = exp.scores
        want = (s - s.mean()) / s.std(unbiased=False) if whiten_scores else s
        assert torch.allclose(returns, want, atol=1e-4)


def test_ppo_dense_reward_pays_the_likelihood_term_per_token_with_the_same_return(world, tokenizer, make_gpt):
    from danlu.align.ppo import make_experience

    actor = make_gpt(seed=0).eval()
    critic, reward_model = RewardModel(make_gpt(seed=1)).eval(), RewardModel(make_gpt(seed=2)).eval()
    with torch.no_grad():  # a head that matters beside the likelihood term
        reward_model.head.weight.normal_(std=0.5)
        reward_model.alpha.fill_(0.7)
    prompts = _chat(tokenizer, [r["prompt"] for r in world.preference_records("train")[:6]])
    exps = {}
    for dense in (False, True):
        cfg = PPOConfig(
            batch_size=6, minibatch_size=6, max_new_tokens=5, dense_reward=dense, lam=1.0, device="cpu"
        )
        exps[dense] = make_experience(
            actor, critic, reward_model, actor, tokenizer, prompts, cfg, beta=0.0, seed=3
        )
    sparse, dense = exps[False], exps[True]
    assert torch.equal(sparse.rollout.input_ids, dense.rollout.input_ids)  # the same answers
    assert torch.allclose(dense.scores, sparse.scores, atol=1e-5)  # head + terms = the reward model's score
    mask = dense.rollout.action_mask
    first = mask.argmax(1)
    # β = 0, γ = λ = 1: the first action's return is the whole score either way ...
    assert torch.allclose(dense.returns.gather(1, first[:, None])[:, 0], sparse.scores, atol=1e-5)
    # ... but later actions no longer carry the earlier tokens' likelihood terms
    assert not torch.allclose(dense.returns * mask, sparse.returns * mask, atol=1e-3)
    plain = RewardModel(make_gpt(seed=2), likelihood_feature=False).eval()
    r = dense.rollout
    head, terms = plain.score_parts(r.input_ids, r.attention_mask, r.position_ids, r.response_mask)
    assert torch.allclose(head, plain(r.input_ids, r.attention_mask, r.position_ids), atol=1e-5)
    assert not terms.any()
    with pytest.raises(DanluError, match="exclude each other"):
        PPOConfig(dense_reward=True, whiten_scores=True)


def test_ppo_samples_per_prompt_subtracts_the_leave_one_out_mean_of_the_siblings(world, tokenizer, make_gpt):
    from danlu.align.ppo import make_experience

    actor = make_gpt(seed=0).eval()
    critic, reward_model = RewardModel(make_gpt(seed=1)).eval(), RewardModel(make_gpt(seed=2)).eval()
    prompts = _chat(tokenizer, [r["prompt"] for r in world.preference_records("train")[:3]])
    for dense in (False, True):
        cfg = PPOConfig(batch_size=6, minibatch_size=6, max_new_tokens=5, samples_per_prompt=2, lam=1.0,
                        dense_reward=dense, device="cpu")  # fmt: skip
        exp = make_experience(actor, critic, reward_model, actor, tokenizer, prompts, cfg, beta=0.0, seed=3)
        r = exp.rollout
        assert r.input_ids.shape[0] == 6 and torch.equal(
            r.input_ids[0, : r.prompt_len], r.input_ids[1, : r.prompt_len]
        )
        # β = 0, γ = λ = 1: the first action's return is the score minus the sibling's score
        first = r.action_mask.argmax(1)
        s = exp.scores.view(3, 2)
        want = torch.stack([s[:, 0] - s[:, 1], s[:, 1] - s[:, 0]], 1).reshape(-1)
        assert torch.allclose(exp.returns.gather(1, first[:, None])[:, 0], want, atol=1e-5)
    with pytest.raises(DanluError, match="samples_per_prompt"):
        PPOConfig(batch_size=6, minibatch_size=6, samples_per_prompt=4)
