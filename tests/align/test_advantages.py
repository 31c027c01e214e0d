"""The notes' advantage recursion against a direct sum, KL-penalised rewards, whitening, group advantages."""

import pytest
import torch

from danlu.align.advantages import gae, group_advantages, kl_penalized_rewards, whiten


def _direct(rewards, values, mask, gamma, lam):
    """Adv_t = Σ_{l≥0} (γλ)^l δ_{t+l}, δ_t = R_t + γ V_{t+1} − V_t, over each row's actions (V after the end = 0)."""
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        steps = [t for t in range(T) if mask[b, t] > 0]
        R = [rewards[b, t].item() for t in steps]
        V = [values[b, t].item() for t in steps] + [0.0]
        deltas = [R[i] + gamma * V[i + 1] - V[i] for i in range(len(steps))]
        for i, t in enumerate(steps):
            adv[b, t] = sum((gamma * lam) ** l * deltas[i + l] for l in range(len(steps) - i))
    return adv


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (1.0, 0.0)])
def test_gae_recursion_equals_the_direct_sum(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 5, 12
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    # Each row: a prompt (masked), then an answer of its own length, then padding (masked).
    mask = torch.zeros(B, T, dtype=torch.float64)
    for b, (start, end) in enumerate([(0, 12), (3, 12), (2, 7), (5, 6), (1, 10)]):
        mask[b, start:end] = 1
    adv, returns = gae(rewards, values, mask, gamma, lam)
    expected = _direct(rewards, values, mask, gamma, lam)
    assert torch.allclose(adv, expected, atol=1e-10)
    assert torch.allclose(returns, (expected + values) * mask, atol=1e-10)
    assert (adv[mask == 0] == 0).all()


def test_lambda_one_gamma_one_gives_reward_to_go_minus_value():
    rewards = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    adv, returns = gae(rewards, values, torch.ones(1, 4), gamma=1.0, lam=1.0)
    assert torch.allclose(returns, torch.tensor([[6.0, 6.0, 5.0, 3.0]]))  # Monte-Carlo returns
    assert torch.allclose(adv, returns - values)


def test_kl_penalized_rewards_put_the_score_on_the_last_action():
    log_probs = torch.tensor([[0.0, -1.0, -2.0, -0.5], [0.0, -1.0, -1.0, 0.0]])
    ref = torch.tensor([[0.0, -1.5, -1.0, -0.5], [0.0, -2.0, -1.0, 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    scores = torch.tensor([2.0, -1.0])
    rewards, kl = kl_penalized_rewards(log_probs, ref, scores, mask, torch.tensor([3, 2]), beta=0.1)
    assert torch.allclose(kl, torch.tensor([[0.0, 0.5, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0]]))
    # −β(log π − log π_ref) per token, + r(x, y) on the last token only.
    assert torch.allclose(rewards, torch.tensor([[0.0, -0.05, 0.1, 2.0], [0.0, -0.1, -1.0, 0.0]]))


def test_whiten_over_masked_positions():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = whiten(x, mask)
    assert w[0, 3] == 0
    assert abs(w[0, :3].mean().item()) < 1e-6 and abs(w[0, :3].std(unbiased=False).item() - 1) < 1e-4


def test_group_advantages_are_relative_within_each_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])  # two groups of 4
    adv = group_advantages(rewards, G=4)
    assert adv[0] > 0 and (adv[1:4] < 0).all()
    assert torch.allclose(adv[:4].sum(), torch.tensor(0.0), atol=1e-5)
    assert (adv[4:] == 0).all()  # all equal: nothing to learn from that group
