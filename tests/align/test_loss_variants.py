"""The loss variants beside GRPO and DPO: normalisation pinned by gradients on masks of different lengths,
gradients that flow, DAPO's dynamic sampling and overlong penalty, RLOO's baseline, the preference losses
wired to the right rows, and short training runs of each on the world (tests/align/test_losses.py pins each
formula's value with loop-written references)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from danlu.align.configs import GRPOConfig
from danlu.align.dpo import PREFERENCE_LOSSES, DPOModel, dpo, encode_pairs, pair_batch, reference_log_probs
from danlu.align.grpo import GRPOObjective, grpo, online_advantages
from danlu.align.losses import (
    GROUP_LOSSES,
    informative_groups,
    ipo_loss,
    kto_loss,
    orpo_loss,
    overlong_penalty,
    policy_loss,
    rloo_loss,
    simpo_loss,
)
from danlu.errors import DanluError
from danlu.models.checkpoints import save_model
from danlu.train.loop import TrainConfig

LENGTHS = [1, 3, 5, 8]  # answers of different lengths: sequence- and token-level means differ
B, T = len(LENGTHS), max(LENGTHS)


def _mask() -> torch.Tensor:
    return (torch.arange(T)[None] < torch.tensor(LENGTHS)[:, None]).float()  # (B, T)


def _grad(variant: str, logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, **kw) -> torch.Tensor:
    lp = logp.clone().requires_grad_(True)
    policy_loss(variant, lp, old, None, adv, _mask(), **kw)[0].backward()
    return lp.grad


@pytest.mark.parametrize("variant", ["grpo", "dr_grpo", "dapo", "gspo", "cispo"])
def test_each_variant_weighs_tokens_by_its_papers_normalisation(variant):
    """At ρ = 1 every surrogate's gradient on token t of answer i is −A_i · w_i, where w_i is the paper's
    normaliser: 1/(G|y_i|) (GRPO, GSPO: each answer's tokens averaged first), 1/Σ|y| (DAPO, CISPO: every token
    of the group alike), 1/(G·L_max) (Dr. GRPO: a constant). Swapping any two fails this test."""
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(B, T, generator=g) - 0.1
    adv = torch.tensor([1.0, -2.0, 0.5, 1.5])
    L_max = 10
    n_tokens = sum(LENGTHS)
    expected = torch.zeros(B, T)
    for i, n in enumerate(LENGTHS):
        w = {"grpo": 1 / (B * n), "gspo": 1 / (B * n), "dapo": 1 / n_tokens, "cispo": 1 / n_tokens,
             "dr_grpo": 1 / (B * L_max)}[variant]  # fmt: skip
        expected[i, :n] = -adv[i] * w
    old = logp.detach()  # ρ = 1 (CISPO's sg(ρ)·A·log π has the same gradient −A·w there)
    grad = _grad(variant, logp, old, adv, max_len=L_max)
    assert torch.allclose(grad, expected, atol=1e-7), (variant, grad, expected)
    others = {"grpo": "dapo", "dapo": "grpo", "dr_grpo": "grpo", "gspo": "dapo", "cispo": "grpo"}
    assert not torch.allclose(_grad(others[variant], logp, old, adv, max_len=L_max), expected, atol=1e-7)


def test_gspo_clips_the_sequence_ratio_where_grpo_clips_tokens():
    """One 8-token answer, A > 0, with half its tokens at ρ = 1.5 and half at ρ = 0.8: GRPO's token clip cuts
    the gradient of the ρ = 1.5 tokens; GSPO's sequence ratio (1.5·0.8)^½ ≈ 1.10 is inside 1 ± 0.2, so every
    token keeps the same gradient −A·s/(G|y|)."""
    logp = torch.full((1, 8), -1.0)
    old = logp - torch.log(torch.tensor([1.5, 0.8] * 4))[None]
    mask, adv = torch.ones(1, 8), torch.tensor([1.0])
    grads = {}
    for variant in ("grpo", "gspo"):
        lp = logp.clone().requires_grad_(True)
        policy_loss(variant, lp, old, None, adv, mask, clip_low=0.2)[0].backward()
        grads[variant] = lp.grad[0]
    assert (grads["grpo"][0::2] == 0).all() and (grads["grpo"][1::2] != 0).all()
    s = math.sqrt(1.5 * 0.8)
    assert torch.allclose(grads["gspo"], torch.full((8,), -s / 8), atol=1e-6)


def test_cispo_weight_is_the_clipped_detached_ratio():
    """d/d log π of −sg(clip(ρ, 1 − ε_l, 1 + ε_h))·A·log π is −clip(ρ)·A/Σ|y| whatever ρ is (MiniMax-M1 eq. 4)."""
    logp = torch.full((B, T), -1.0)
    ratios = torch.tensor([0.5, 1.1, 1.5, 3.0])
    old = logp - torch.log(ratios)[:, None]
    adv = torch.ones(B)
    grad = _grad("cispo", logp, old, adv, clip_low=0.2, clip_high=0.28)
    expected = -(ratios.clamp(0.8, 1.28)[:, None] * _mask()) / sum(LENGTHS)
    assert torch.allclose(grad, expected, atol=1e-7)


def test_every_loss_passes_a_finite_nonzero_gradient():
    g = torch.Generator().manual_seed(1)
    logp = (-torch.rand(B, T, generator=g) * 2).requires_grad_(True)
    old, ref = logp.detach() + 0.1 * torch.randn(B, T, generator=g), logp.detach() - 0.2
    adv = torch.randn(B, generator=g)
    for variant in GROUP_LOSSES:
        logp.grad = None
        loss, _ = policy_loss(variant, logp, old, ref, adv, _mask(), beta=0.04, max_len=T)
        loss.backward()
        assert torch.isfinite(logp.grad).all() and logp.grad.abs().sum() > 0, variant
        assert (logp.grad * (1 - _mask())).abs().sum() == 0, f"{variant}: padding got a gradient"
    seq = (-torch.rand(8, generator=g) * 10).requires_grad_(True)
    ref_seq, lengths = (
        seq.detach() + torch.randn(8, generator=g),
        torch.randint(2, 9, (8,), generator=g).float(),
    )
    cases = {
        "rloo": lambda: rloo_loss(seq, torch.tensor([1.0, 0, 0, 1, 0, 0, 1, 0]), 4),
        "ipo": lambda: ipo_loss(seq[:4], seq[4:], ref_seq[:4], ref_seq[4:], 0.1),
        "kto": lambda: kto_loss(seq, ref_seq, torch.arange(8) < 4, torch.tensor(0.1), 0.1),
        "orpo": lambda: orpo_loss(seq[:4] / lengths[:4], seq[4:] / lengths[4:], -seq[:4] / lengths[:4])[0],
        "simpo": lambda: simpo_loss(seq[:4], seq[4:], lengths[:4], lengths[4:]),
    }
    for name, loss_fn in cases.items():
        seq.grad = None
        loss = loss_fn()
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(seq.grad).all() and seq.grad.abs().sum() > 0, name


def test_ipo_equals_its_squared_margin_and_stops_at_the_target():
    g = torch.Generator().manual_seed(2)
    pc, pr, rc, rr = (-torch.rand(6, generator=g, dtype=torch.float64) * 9 for _ in range(4))
    beta = 0.25
    expected = sum(((a - c) - (b - d) - 1 / (2 * beta)) ** 2 for a, b, c, d in
                   zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())) / 6  # fmt: skip
    assert float(ipo_loss(pc, pr, rc, rr, beta)) == pytest.approx(expected, rel=1e-12)
    at_target = torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0])
    assert float(ipo_loss(*at_target, beta=0.25)) == 0.0  # h = 1/(2β) = 2: nothing more to push


def test_overlong_penalty_is_daposs_piecewise_formula():
    lengths = torch.tensor([3, 12, 13, 16, 20, 21])
    # L_max = 20, L_cache = 8: free up to 12, then −(|y| − 12)/8, −1 past 20
    assert torch.allclose(overlong_penalty(lengths, 20, 8), torch.tensor([0, 0, -1 / 8, -0.5, -1.0, -1.0]))
    assert (overlong_penalty(lengths, 20, 0) == 0).all()


def test_dapo_dynamic_sampling_drops_exactly_the_flat_groups(world, tokenizer, make_gpt, monkeypatch):
    """Through the trainer: groups scoring 1 1 1 1 and 0 0 0 0 lose every answer's tokens, the mixed groups
    keep them all; informative_groups agrees on random rewards with constant groups planted."""
    g = torch.Generator().manual_seed(3)
    r = (torch.rand(10, 4, generator=g) > 0.5).float()
    r[2], r[5], r[7] = 1.0, 0.0, 1.0
    expected = torch.tensor([len(set(row.tolist())) > 1 for row in r])
    assert torch.equal(informative_groups(r.reshape(-1), 4), expected)

    import danlu.data.world as world_module

    scripted = iter([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    monkeypatch.setattr(world_module, "reward", lambda record, text: next(scripted))
    records = [r for r in world.sft_records("train") if r["kind"] == "arith"][:3]
    cfg = GRPOConfig(prompts_per_step=3, group_size=4, max_new_tokens=3, loss="dapo", device="cpu")
    objective = GRPOObjective(make_gpt(), make_gpt(), tokenizer, records, cfg, None)
    objective.setup(torch.device("cpu"))
    rollout, _, _, _, mask = objective.work(0).updates[0][0]
    kept = mask.sum(1) > 0  # (12,)
    assert kept.tolist() == [False] * 4 + [True] * 4 + [False] * 4
    assert torch.equal(mask[4:8], rollout.action_mask[4:8])


def test_rloo_advantages_are_the_leave_one_out_mean_of_kl_penalised_rewards():
    g = torch.Generator().manual_seed(4)
    G, beta = 4, 0.5
    rewards = torch.rand(8, generator=g)
    old, ref = -torch.rand(8, 5, generator=g), -torch.rand(8, 5, generator=g)
    mask = (torch.rand(8, 5, generator=g) > 0.3).float()
    adv = online_advantages("rloo", rewards, G, old, ref, mask, beta)
    shaped = [float(rewards[i]) - beta * float(((old[i] - ref[i]) * mask[i]).sum()) for i in range(8)]
    for i in range(8):
        others = [shaped[j] for j in range(i - i % G, i - i % G + G) if j != i]
        assert float(adv[i]) == pytest.approx(shaped[i] - sum(others) / (G - 1), abs=1e-6)
    # dr_grpo keeps the scale of the rewards; grpo divides by the group's std
    dr = online_advantages("dr_grpo", rewards, G, old, ref, mask, beta)
    assert torch.allclose(dr.view(2, 4), rewards.view(2, 4) - rewards.view(2, 4).mean(1, keepdim=True))
    with pytest.raises(DanluError, match="inner_epochs 1"):
        GRPOConfig(loss="rloo", inner_epochs=2)


def test_clip_high_defaults_to_each_papers_value():
    assert GRPOConfig(loss="dapo").upper_clip() == 0.28 and GRPOConfig(loss="cispo").upper_clip() == 0.28
    assert GRPOConfig(loss="grpo", clip_range=0.1).upper_clip() == 0.1
    assert GRPOConfig(loss="dapo", clip_high=0.3).upper_clip() == 0.3
    with pytest.raises(DanluError, match="overlong_buffer"):
        GRPOConfig(overlong_buffer=16, max_new_tokens=16)


@pytest.mark.parametrize("variant", ["rloo", "dapo"])
def test_online_variants_train_on_the_worlds_arithmetic(
    variant, world, tokenizer, make_gpt, tmp_path, monkeypatch
):
    """A few rounds on world arithmetic; the reward is scripted 1 0 0 1 … so every group has a signal (a tiny
    untrained policy scores 0 everywhere, which would leave every advantage 0 and the weights unmoved)."""
    import itertools

    import danlu.data.world as world_module

    scripted = itertools.cycle([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    monkeypatch.setattr(world_module, "reward", lambda record, text: next(scripted))
    records = [r for r in world.sft_records("train") if r["kind"] == "arith"][:8]
    policy = make_gpt()
    before = [p.detach().clone() for p in policy.parameters()]
    cfg = GRPOConfig(max_steps=2, prompts_per_step=2, group_size=4, max_new_tokens=4, loss=variant, lr=1e-3,
                     overlong_buffer=2, eval_interval=2, device="cpu")  # fmt: skip
    summary = grpo(policy, tokenizer, records, tmp_path, cfg, eval_records=records[:2], show_progress=False)
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    assert len(steps) == 2 and all(math.isfinite(r["loss"]) and math.isfinite(r["kl"]) for r in steps)
    assert 0 <= summary["eval_accuracy_after"] <= 1
    assert all(torch.isfinite(p).all() for p in policy.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_preference_losses_score_the_right_rows(world, tokenizer, make_gpt):
    """DPOModel's loss for each variant equals its formula on log-probs computed the independent way
    (reference_log_probs row by row), with lengths counted from the labels and KTO's z₀ from mismatched rows."""
    model = make_gpt().eval()
    records = world.preference_records("train")[:3]
    pairs = encode_pairs(records, tokenizer, 96, mismatched=True)
    swapped = {"prompt": records[0]["prompt"], "chosen": records[1]["chosen"], "rejected": "-"}
    assert pairs[0][2].input_ids == encode_pairs([swapped], tokenizer, 96)[0][0].input_ids
    pol = reference_log_probs(model, pairs, 0).double()  # (3, 3): chosen, rejected, mismatched
    ref = pol - torch.tensor([[0.3, -0.2, 0.1], [0.5, 0.4, -0.3], [-0.1, 0.2, 0.6]], dtype=torch.float64)
    lengths = torch.tensor([[sum(x != -100 for x in ex.labels[1:]) for ex in row] for row in pairs]).double()
    batch = pair_batch(pairs, 0)
    kl = max(0.0, float((pol[:, 2] - ref[:, 2]).mean()))
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    for name in PREFERENCE_LOSSES:
        beta = 0.3
        with torch.no_grad():
            out = DPOModel(model, beta=beta, loss=name, gamma=0.4)(
                batch["input_ids"], batch["labels"], ref.float()
            )
        got = float(out.loss)
        terms = []
        for i in range(3):
            hc, hr = float(pol[i, 0] - ref[i, 0]), float(pol[i, 1] - ref[i, 1])
            mc, mr = float(pol[i, 0] / lengths[i, 0]), float(pol[i, 1] / lengths[i, 1])
            if name == "dpo":
                terms.append(-math.log(sig(beta * (hc - hr))))
            elif name == "ipo":
                terms.append((hc - hr - 1 / (2 * beta)) ** 2)
            elif name == "kto":  # one term per answer: 6 answers, chosen desirable, rejected undesirable
                terms += [1 - sig(beta * (hc - kl)), 1 - sig(beta * (kl - hr))]
            elif name == "orpo":
                odds = lambda m: math.exp(m) / (1 - math.exp(m))  # noqa: E731
                terms.append(-mc - beta * math.log(sig(math.log(odds(mc) / odds(mr)))))
            else:
                terms.append(-math.log(sig(beta * mc - beta * mr - 0.4)))
        assert got == pytest.approx(sum(terms) / len(terms), rel=1e-4, abs=1e-5), name


@pytest.mark.parametrize("variant", ["ipo", "kto", "orpo", "simpo"])
def test_preference_variants_train_on_the_worlds_pairs(variant, world, tokenizer, make_gpt, tmp_path):
    records = world.preference_records("train")[:8]
    cfg = TrainConfig(max_steps=4, batch_size=4, block_size=96, lr=3e-3, warmup_steps=1, eval_interval=4,
                      eval_batches=1, show_progress=False, weight_decay=0.0)  # fmt: skip
    policy, summary = dpo(make_gpt(), tokenizer, records, tmp_path, cfg, eval_records=records[:4],
                          val_records=records[:4], loss=variant)  # fmt: skip
    assert summary["loss_variant"] == variant
    assert math.isfinite(summary["final_val_loss"]) and summary["final_val_loss"] < summary["first_val_loss"]
    assert all(torch.isfinite(p).all() for p in policy.parameters())


def test_dpo_cli_takes_a_loss_and_rejects_bad_ones(world, tokenizer, make_gpt, tmp_path, cli):
    ck = save_model(make_gpt(), tmp_path / "sft", tokenizer=tokenizer)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in world.preference_records("train")[:8]))
    assert cli(["dpo", "--model", str(ck), "--data", str(data), "--out", str(tmp_path / "o"), "--loss", "kto",
                "--max-steps", "1", "--batch-size", "4", "--quiet"]) == 0  # fmt: skip
    assert (tmp_path / "o" / "checkpoint" / "model.safetensors").is_file()
    with pytest.raises(SystemExit):  # argparse's choices: exit 2 with the valid names
        cli(["dpo", "--model", str(ck), "--data", str(data), "--out", str(tmp_path / "b"), "--loss", "nope"])
    with pytest.raises(DanluError, match="not a preference loss"):
        dpo(make_gpt(), tokenizer, world.preference_records("train")[:4], tmp_path / "c", loss="cpo")
