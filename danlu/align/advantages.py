"""Rewards, advantages and returns for RLHF-PPO and GRPO, as plain functions on (B, T) tensors.

Notation: B rollouts, T token positions (the (B, T − 1) action grid of danlu.align.rollout), mask 1 on actions.

Per-token reward (notes 000 §RLHF; Ziegler et al. 2019; Ouyang et al. 2022 eq. 2): the Reference model keeps
the Actor close — "ref_log_probs − log_probs measures how alike the two output distributions are" — so every
response token earns −β·(log_probs − ref_log_probs), and the last token also earns the reward model's score:

    R_t = −β (log π(a_t|s_t) − log π_ref(a_t|s_t)) + [t = last] · r(x, y)

Advantage (notes 000, with λ; Schulman et al. 2016, GAE): "if the Critic predicts V_t but acting gives
R_t + γ V_{t+1}, the advantage is Adv_t = R_t + γ V_{t+1} − V_t; adding future advantages, computed backward
from the last step where future returns and advantages are 0":

    Adv_t = R_t + γ V_{t+1} − V_t + γ λ Adv_{t+1}          returns_t = Adv_t + V_t  (the critic's target)

Equivalently Adv_t = Σ_l (γλ)^l δ_{t+l} with δ_t = R_t + γ V_{t+1} − V_t (tested against this direct sum).
GRPO (Shao et al. 2024, DeepSeekMath) drops the critic: G answers per prompt, Adv_i = (r_i − mean_G) / std_G.
"""

from __future__ import annotations

import torch


def kl_penalized_rewards(
    log_probs: torch.Tensor, ref_log_probs: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
    last: torch.Tensor, beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(rewards (B, T), kl (B, T)): R_t = −β·kl_t on actions, plus scores (B,) added at column `last` (B,).

    kl_t = log_probs − ref_log_probs, the per-token estimate of KL(π ‖ π_ref) on the sampled tokens."""
    kl = (log_probs - ref_log_probs) * mask
    rewards = -beta * kl
    rewards = rewards.scatter_add(1, last[:, None], scores[:, None].to(rewards.dtype))
    return rewards, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), each (B, T), by the notes' backward recursion over the masked positions.

    Positions with mask 0 (the prompt, padding after the answer) neither earn nor pass on anything: the
    value after the last action is 0 ("for the last step, future returns and advantages are 0")."""
    B, T = rewards.shape
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # R_t + γ V_{t+1} − V_t
        adv = delta + gamma * lam * next_adv  # + γ λ Adv_{t+1}
        advantages[:, t] = adv * m
        # A masked position is transparent: the step before it sees the next real step's value and advantage.
        next_value = torch.where(m > 0, values[:, t], next_value)
        next_adv = torch.where(m > 0, adv, next_adv)
    returns = (advantages + values) * mask
    return advantages, returns


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / std over the masked positions (advantage normalisation, as in PPO implementations)."""
    n = mask.sum().clamp(min=1)
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / n
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def group_advantages(
    rewards: torch.Tensor, G: int, eps: float = 1e-4, scale_by_std: bool = True
) -> torch.Tensor:
    """GRPO: rewards (N·G,) of G answers per prompt, in prompt order -> (r − mean_group) / (std_group + eps).

    A group whose answers all score the same teaches nothing (all advantages 0). Dr. GRPO (Liu et al. 2025)
    drops the division by the std (`scale_by_std=False`), which over-weights groups that are nearly solved."""
    r = rewards.view(-1, G)  # (N, G)
    adv = r - r.mean(dim=1, keepdim=True)
    if scale_by_std:
        adv = adv / (r.std(dim=1, keepdim=True, unbiased=False) + eps)
    return adv.reshape(-1)
