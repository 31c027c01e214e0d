"""The alignment losses beside PPO and DPO, each a pure function of log-probabilities, as its paper states it.

Group policy-gradient losses (G sampled answers per prompt, a verifiable reward each; per-token tensors (B, T),
`mask` 1 on answer tokens, advantages (B,) one per answer, ρ_t = π_θ/π_old per token):

- `grpo`   (Shao et al. 2024): A = (r − mean) / std over the group (`advantages.group_advantages`); −1/G Σ_i 1/|y_i| Σ_t min(ρA, clip(ρ, 1±ε)A),
           each answer's tokens averaged first, so a long answer weighs as much as a short one.
- `dr_grpo` (Liu et al. 2025, "Understanding R1-Zero-like training"): the two biases removed — no division by
           the group's std, and a constant normaliser (G · L_max) instead of 1/|y_i|, which rewarded long wrong
           answers with a smaller per-token penalty.
- `dapo`   (Yu et al. 2025): token-level normalisation 1/Σ_i|y_i| Σ_i Σ_t, "clip-higher" clip(ρ, 1 − ε_low,
           1 + ε_high) with ε_high > ε_low so unlikely tokens can still rise, no KL term, and dynamic sampling:
           groups whose answers all score the same (no signal) are dropped (`informative_groups`); optional
           soft overlong punishment of the reward (`overlong_penalty`).
- `gspo`   (Zheng et al. 2025): one importance ratio per answer, s_i = exp(1/|y_i| Σ_t log ρ_t), clipped at the
           sequence level: −1/G Σ_i min(s_i A_i, clip(s_i, 1±ε) A_i).
- `cispo`  (MiniMax-M1, 2025): the ratio is clipped and detached and multiplies log π, so every token keeps a
           gradient (PPO's clip zeroes it): −1/Σ|y| Σ_i Σ_t sg(clip(ρ_t, 1 − ε_low, 1 + ε_high)) A_i log π_t.

Every variant may add β · KL_t with the k3 estimator KL_t = π_ref/π − log(π_ref/π) − 1 (≥ 0), under the same
normalisation as its surrogate.

- `rloo`   (Ahmadian et al. 2024): REINFORCE with a leave-one-out baseline, A_i = r_i − 1/(G−1) Σ_{j≠i} r_j,
           loss −1/G Σ_i A_i log π(y_i) on whole-sequence log-probabilities.

Preference losses on summed sequence log-probabilities (N,) (DPO itself: danlu.align.dpo.dpo_loss):

- `ipo`    (Azar et al. 2023, "A general theoretical paradigm", eq. 17): with h = log π(y_w)/π_ref(y_w) −
           log π(y_l)/π_ref(y_l), loss = (h − 1/(2β))²: a squared loss that stops at a finite margin, where
           DPO's −log σ(βh) keeps pushing h up on pairs it already separates.

- `kto`    (Ethayarajh et al. 2024): unpaired desirable/undesirable answers; with r = log π/π_ref and z₀ a
           detached estimate of KL(π‖π_ref) (clamped ≥ 0; the paper's, and danlu.align.dpo's: the mean
           log-ratio of mismatched prompt/answer pairs of the batch), v = λ_D σ(β(r − z₀)) if desirable else
           λ_U σ(β(z₀ − r)); loss = mean(λ_y − v).
- `orpo`   (Hong et al. 2024): no reference model; with P(y) = exp(mean token log-prob),
           odds(y) = P/(1 − P), loss = NLL(y_w) − λ log σ(log odds(y_w) − log odds(y_l)).
- `simpo`  (Meng et al. 2024): no reference model; loss = −log σ(β/|y_w| log π(y_w) − β/|y_l| log π(y_l) − γ).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from danlu.align.configs import CLIP_HIGH, GROUP_LOSSES, ONLINE_LOSSES
from danlu.errors import DanluError

__all__ = [
    "GROUP_LOSSES",
    "ONLINE_LOSSES",
    "CLIP_HIGH",
    "informative_groups",
    "policy_loss",
    "rloo_advantages",
    "rloo_loss",
    "overlong_penalty",
    "k3_kl",
    "ipo_loss",
    "kto_loss",
    "orpo_loss",
    "simpo_loss",
]


def informative_groups(rewards: torch.Tensor, G: int) -> torch.Tensor:
    """DAPO's dynamic sampling: (N,) True where a group's rewards are not all equal (it carries a gradient)."""
    r = rewards.view(-1, G)  # (N, G)
    return (r.max(dim=1).values - r.min(dim=1).values) > 0


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to the reward: (N,) lengths ->

        0                                   if |y| ≤ L_max − L_cache
        ((L_max − L_cache) − |y|) / L_cache  if L_max − L_cache < |y| ≤ L_max
        −1                                  if |y| > L_max

    with L_max = `max_len` and L_cache = `buffer` (0: no penalty): an answer pays more the nearer it runs to
    the cut, so truncation stops being an accident the reward cannot see."""
    lengths = lengths.float()
    if buffer <= 0:
        return torch.zeros_like(lengths)
    soft = ((max_len - buffer) - lengths) / buffer
    return torch.where(lengths > max_len, torch.full_like(lengths, -1.0), soft.clamp(max=0.0))


def k3_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π ‖ π_ref): π_ref/π − log(π_ref/π) − 1 (≥ 0, unbiased; Schulman 2020)."""
    log_ratio = ref_log_probs - log_probs
    return torch.exp(log_ratio) - log_ratio - 1


def policy_loss(
    variant: str,
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    ref_log_probs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    beta: float = 0.0,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    max_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mean KL) of one of GROUP_LOSSES; per-token tensors (B, T), advantages (B,).

    `clip_high` defaults to `clip_low` (symmetric); DAPO's paper uses 0.2 / 0.28. `max_len` is Dr. GRPO's
    constant normaliser (default: T, the padded answer length)."""
    if variant not in GROUP_LOSSES:
        raise DanluError(f"--loss: {variant!r} is not a group loss; choose one of {', '.join(GROUP_LOSSES)}")
    clip_high = clip_low if clip_high is None else clip_high
    mask = mask.to(log_probs.dtype)
    adv = advantages[:, None]  # (B, 1)
    log_ratio = (log_probs - old_log_probs) * mask
    n_tokens = mask.sum(dim=1).clamp(min=1)  # (B,) |y_i|
    kl = k3_kl(log_probs, ref_log_probs) * mask if ref_log_probs is not None else torch.zeros_like(log_probs)
    mean_kl = kl.sum() / mask.sum().clamp(min=1)

    if variant == "gspo":
        s = torch.exp(log_ratio.sum(dim=1) / n_tokens)  # (B,) sequence-level ratio
        surrogate = torch.minimum(s * advantages, s.clamp(1 - clip_low, 1 + clip_high) * advantages)
        per_answer = -surrogate + beta * kl.sum(dim=1) / n_tokens
        return per_answer.mean(), mean_kl.detach()

    ratio = torch.exp(log_ratio)
    if variant == "cispo":
        weight = ratio.clamp(1 - clip_low, 1 + clip_high).detach()
        per_token = -(weight * adv * log_probs) + beta * kl
    else:
        per_token = -torch.minimum(ratio * adv, ratio.clamp(1 - clip_low, 1 + clip_high) * adv) + beta * kl
    per_token = per_token * mask
    if variant == "grpo":
        loss = (per_token.sum(dim=1) / n_tokens).mean()
    elif variant == "dr_grpo":
        loss = per_token.sum() / (per_token.shape[0] * (max_len or per_token.shape[1]))
    else:  # dapo, cispo: every token of the batch weighs the same
        loss = per_token.sum() / mask.sum().clamp(min=1)
    return loss, mean_kl.detach()


def rloo_advantages(rewards: torch.Tensor, G: int) -> torch.Tensor:
    """r_i − mean of the other G − 1 rewards of its group, for rewards (N·G,) in prompt order."""
    if G < 2:
        raise DanluError(f"RLOO needs at least 2 samples per prompt (leave one out), got G={G}")
    r = rewards.view(-1, G)  # (N, G)
    others = (r.sum(dim=1, keepdim=True) - r) / (G - 1)
    return (r - others).reshape(-1)


def rloo_loss(sequence_log_probs: torch.Tensor, rewards: torch.Tensor, G: int) -> torch.Tensor:
    """REINFORCE with the leave-one-out baseline: −mean_i A_i log π(y_i); inputs (N·G,)."""
    return -(rloo_advantages(rewards, G).detach() * sequence_log_probs).mean()


def ipo_loss(
    policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float = 0.1,
) -> torch.Tensor:  # fmt: skip
    """IPO's loss mean((h − 1/(2β))²) from summed log-probs (N,) of chosen and rejected answers."""
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return ((h - 1 / (2 * beta)) ** 2).mean()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl_estimate: torch.Tensor,
    beta: float = 0.1,
    lambda_d: float = 1.0,
    lambda_u: float = 1.0,
) -> torch.Tensor:
    """KTO's loss over answers (N,); `desirable` (N,) bool; `kl_estimate` a scalar (detached, clamped ≥ 0 here)."""
    z0 = kl_estimate.detach().clamp(min=0)
    r = policy_logps - ref_logps
    desirable = desirable.bool()
    value = torch.where(
        desirable, lambda_d * torch.sigmoid(beta * (r - z0)), lambda_u * torch.sigmoid(beta * (z0 - r))
    )
    lam = torch.where(desirable, torch.full_like(r, lambda_d), torch.full_like(r, lambda_u))
    return (lam - value).mean()


def orpo_loss(
    chosen_mean_logps: torch.Tensor,
    rejected_mean_logps: torch.Tensor,
    chosen_nll: torch.Tensor,
    lam: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, log odds ratio (N,)) from mean per-token log-probs (N,) of chosen and rejected answers.

    log odds(y) = log P − log(1 − P) with log P the mean token log-prob (< 0), computed as log P − log1p(−e^{log P})."""

    def log_odds(logp: torch.Tensor) -> torch.Tensor:
        return logp - torch.log1p(-torch.exp(logp).clamp(max=1 - 1e-6))

    ratio = log_odds(chosen_mean_logps) - log_odds(rejected_mean_logps)
    return (chosen_nll - lam * F.logsigmoid(ratio)).mean(), ratio.detach()


def simpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float = 2.0,
    gamma: float = 0.5,
) -> torch.Tensor:
    """SimPO's loss from summed log-probs (N,) and answer lengths in tokens (N,)."""
    margin = beta * chosen_logps / chosen_lengths - beta * rejected_logps / rejected_lengths - gamma
    return -F.logsigmoid(margin).mean()
