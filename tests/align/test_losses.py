"""Each alignment loss against its paper's formula, written out as plain loops on random tensors."""

from __future__ import annotations

import math

import pytest
import torch

from danlu.align.advantages import group_advantages
from danlu.align.configs import GRPOConfig
from danlu.align.losses import (
    GROUP_LOSSES,
    informative_groups,
    kto_loss,
    orpo_loss,
    policy_loss,
    rloo_advantages,
    rloo_loss,
    simpo_loss,
)
from danlu.errors import DanluError

B, T = 6, 7


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g) * 3
    old = logp + 0.3 * torch.randn(B, T, generator=g)
    ref = logp + 0.3 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    return logp, old, ref, adv, mask


def _k3(lp: float, rp: float) -> float:
    return math.exp(rp - lp) - (rp - lp) - 1


def _reference(variant, logp, old, ref, adv, mask, beta, lo, hi, max_len):
    """One answer and one token at a time, exactly as each paper writes its objective."""
    per_answer, tokens_total, sum_all = [], 0, 0.0
    for i in range(B):
        toks = [t for t in range(T) if mask[i, t] > 0]
        A = float(adv[i])
        if variant == "gspo":
            s = math.exp(sum(float(logp[i, t] - old[i, t]) for t in toks) / len(toks))
            sur = min(s * A, min(max(s, 1 - lo), 1 + hi) * A)
            kl = sum(_k3(float(logp[i, t]), float(ref[i, t])) for t in toks) / len(toks)
            per_answer.append(-sur + beta * kl)
            continue
        terms = []
        for t in toks:
            rho = math.exp(float(logp[i, t] - old[i, t]))
            clipped = min(max(rho, 1 - lo), 1 + hi)
            if variant == "cispo":
                term = -(clipped * A * float(logp[i, t]))
            else:
                term = -min(rho * A, clipped * A)
            terms.append(term + beta * _k3(float(logp[i, t]), float(ref[i, t])))
        per_answer.append(sum(terms) / len(toks))
        sum_all += sum(terms)
        tokens_total += len(toks)
    if variant in ("grpo", "gspo"):
        return sum(per_answer) / B
    if variant == "dr_grpo":
        return sum_all / (B * max_len)
    return sum_all / tokens_total  # dapo, cispo


@pytest.mark.parametrize("variant", GROUP_LOSSES)
@pytest.mark.parametrize("beta,hi", [(0.0, 0.2), (0.04, 0.28)])
def test_group_losses_equal_their_formulas(variant, beta, hi):
    logp, old, ref, adv, mask = _batch(1)
    loss, kl = policy_loss(
        variant, logp, old, ref, adv, mask, beta=beta, clip_low=0.2, clip_high=hi, max_len=10
    )
    expected = _reference(variant, logp, old, ref, adv, mask, beta, 0.2, hi, 10)
    assert float(loss) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    direct_kl = sum(
        _k3(float(logp[i, t]), float(ref[i, t])) for i in range(B) for t in range(T) if mask[i, t]
    )
    assert float(kl) == pytest.approx(direct_kl / float(mask.sum()), rel=1e-5)


def test_cispo_keeps_a_gradient_where_the_ppo_clip_zeroes_it():
    logp, _, ref, _, mask = _batch(2)
    old = logp.detach() - 1.0  # ρ = e ≈ 2.7: far above 1 + ε on every token
    adv = torch.ones(B)
    grads = {}
    for variant in ("dapo", "cispo"):
        lp = logp.clone().requires_grad_(True)
        policy_loss(variant, lp, old, ref, adv, mask, clip_low=0.2, clip_high=0.28)[0].backward()
        grads[variant] = lp.grad.abs().sum()
    assert grads["dapo"] == 0 and grads["cispo"] > 0


def test_dr_grpo_advantages_are_not_scaled_and_dapo_drops_flat_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    plain = group_advantages(rewards, 4, scale_by_std=False)
    assert torch.allclose(plain[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    assert torch.equal(informative_groups(rewards, 4), torch.tensor([True, False]))


def test_rloo_is_the_leave_one_out_baseline():
    g = torch.Generator().manual_seed(3)
    rewards, logps = torch.rand(12, generator=g), -torch.rand(12, generator=g)
    G = 4
    expected_adv = []
    for i in range(12):
        group = range(i - i % G, i - i % G + G)
        expected_adv.append(float(rewards[i]) - sum(float(rewards[j]) for j in group if j != i) / (G - 1))
    assert torch.allclose(rloo_advantages(rewards, G), torch.tensor(expected_adv), atol=1e-6)
    loss = rloo_loss(logps, rewards, G)
    assert float(loss) == pytest.approx(
        -sum(a * float(lp) for a, lp in zip(expected_adv, logps)) / 12, rel=1e-5
    )
    with pytest.raises(DanluError, match="at least 2"):
        rloo_advantages(rewards, 1)


def test_kto_equals_its_value_function():
    g = torch.Generator().manual_seed(4)
    pol, ref = -torch.rand(10, generator=g) * 5, -torch.rand(10, generator=g) * 5
    desirable = torch.rand(10, generator=g) > 0.5
    z0 = torch.tensor(0.3)
    beta, ld, lu = 0.1, 1.0, 1.33
    expected = 0.0
    for p, r, d in zip(pol.tolist(), ref.tolist(), desirable.tolist()):
        reward = p - r
        v = (
            ld * (1 / (1 + math.exp(-beta * (reward - 0.3))))
            if d
            else lu * (1 / (1 + math.exp(-beta * (0.3 - reward))))
        )
        expected += (ld if d else lu) - v
    assert float(kto_loss(pol, ref, desirable, z0, beta, ld, lu)) == pytest.approx(expected / 10, rel=1e-5)
    assert float(kto_loss(pol, ref, desirable, torch.tensor(-5.0), beta)) == pytest.approx(
        float(kto_loss(pol, ref, desirable, torch.tensor(0.0), beta))
    )  # the KL estimate is clamped at 0


def test_orpo_and_simpo_equal_their_formulas():
    g = torch.Generator().manual_seed(5)
    cw, cl = -torch.rand(8, generator=g) * 2 - 0.05, -torch.rand(8, generator=g) * 2 - 0.05  # mean log-probs
    nll = torch.rand(8, generator=g)
    expected = 0.0
    for w, l, n in zip(cw.tolist(), cl.tolist(), nll.tolist()):
        odds_w, odds_l = math.exp(w) / (1 - math.exp(w)), math.exp(l) / (1 - math.exp(l))
        expected += n - 0.1 * math.log(1 / (1 + math.exp(-math.log(odds_w / odds_l))))
    loss, _ = orpo_loss(cw, cl, nll, lam=0.1)
    assert float(loss) == pytest.approx(expected / 8, rel=1e-5)
    sw, sl = cw * 5, cl * 3
    lw, ll = torch.full((8,), 5.0), torch.full((8,), 3.0)
    expected = sum(
        -math.log(1 / (1 + math.exp(-(2.0 * a / 5 - 2.0 * b / 3 - 0.5))))
        for a, b in zip(sw.tolist(), sl.tolist())
    )
    assert float(simpo_loss(sw, sl, lw, ll, beta=2.0, gamma=0.5)) == pytest.approx(expected / 8, rel=1e-5)


def test_bad_loss_names():
    logp, old, ref, adv, mask = _batch()
    with pytest.raises(DanluError, match="--loss"):
        policy_loss("ppo2", logp, old, ref, adv, mask)
    with pytest.raises(DanluError, match="loss must be one of"):
        GRPOConfig(loss="nope")


@pytest.mark.parametrize("variant", GROUP_LOSSES)
def test_grpo_trainer_runs_every_variant(variant, world, tokenizer, make_gpt, tmp_path):
    import json

    from danlu.align.grpo import grpo

    records = [r for r in world.sft_records("train") if r["kind"] == "arith"][:4]
    policy = make_gpt()
    before = [p.detach().clone() for p in policy.parameters()]
    cfg = GRPOConfig(max_steps=1, prompts_per_step=2, group_size=4, max_new_tokens=3, inner_epochs=2,
                     loss=variant, clip_high=0.28, device="cpu", lr=1e-3)  # fmt: skip
    grpo(policy, tokenizer, records, tmp_path / variant, cfg, show_progress=False)
    logged = [json.loads(x) for x in (tmp_path / variant / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(logged[-1]["loss"]) and math.isfinite(logged[-1]["kl"])
    assert all(torch.isfinite(p).all() for p in policy.parameters())
    assert len(before) == len(list(policy.parameters()))
