"""Configs of the online alignment trainers (PPO, GRPO), kept free of torch so the CLI can build its flags
without importing it. Field comments give the meaning; danlu.align.ppo / danlu.align.grpo give the formulas."""

from __future__ import annotations

from dataclasses import dataclass

from danlu.errors import DanluError


@dataclass
class PPOConfig:
    steps: int = 40  # rollout + update rounds
    batch_size: int = 32  # prompts per rollout
    minibatch_size: int = 16
    ppo_epochs: int = 2  # passes over each rollout
    lr: float = 3e-5  # actor
    decay: str = "constant"  # learning-rate decay after a 5% warmup: cosine | linear | constant
    critic_lr: float = 3e-4  # the critic starts near zero (a fresh head) and must catch up fast
    init_kl_coef: float = 0.1  # β
    adaptive_kl: bool = True
    target_kl: float = 0.05  # nats per token the adaptive β aims at
    kl_horizon: int = 400
    kl_bound: float = 0.2  # the bound the report checks the mean per-token KL against
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    whiten_advantages: bool = True
    max_new_tokens: int = 24
    temperature: float = 1.0
    grad_clip: float = 1.0
    eval_interval: int = 10
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        checks = [
            (self.steps > 0, f"steps must be positive, got {self.steps}"),
            (self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}"),
            (0 < self.minibatch_size <= self.batch_size, f"minibatch_size must be in [1, batch_size], got {self.minibatch_size}"),
            (self.lr > 0 and self.critic_lr > 0, f"learning rates must be positive, got {self.lr}, {self.critic_lr}"),
            (self.init_kl_coef >= 0, f"init_kl_coef must be >= 0, got {self.init_kl_coef}"),
            (0 <= self.gamma <= 1 and 0 <= self.lam <= 1, f"gamma and lam must be in [0, 1], got {self.gamma}, {self.lam}"),
            (self.clip_range > 0, f"clip_range must be > 0, got {self.clip_range}"),
            (self.temperature > 0, f"temperature must be > 0 to sample rollouts, got {self.temperature}"),
            (self.decay in ("cosine", "linear", "constant"), f"decay must be cosine|linear|constant: {self.decay!r}"),
        ]  # fmt: skip
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise DanluError("bad PPO config: " + "; ".join(bad))


@dataclass
class GRPOConfig:
    steps: int = 40
    prompts_per_step: int = 16
    group_size: int = 8  # G answers per prompt
    inner_epochs: int = 1  # updates per sampled batch (1: ρ = 1, the clip never bites; >1 reuses samples)
    lr: float = 2e-5
    decay: str = "cosine"  # learning-rate decay after a 5% warmup: cosine | linear | constant
    beta: float = 0.04  # KL weight (DeepSeekMath's value)
    clip_range: float = 0.2
    # The loss variant (danlu.align.losses): grpo | dr_grpo | dapo | gspo | cispo
    loss: str = "grpo"
    clip_high: float = 0.2  # upper clip ε_high (DAPO's clip-higher uses 0.28; = clip_range is symmetric)
    max_new_tokens: int = 16
    temperature: float = 1.0
    grad_clip: float = 1.0
    eval_interval: int = 10
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        from danlu.align.losses import GROUP_LOSSES

        checks = [
            (self.steps > 0, f"steps must be positive, got {self.steps}"),
            (self.prompts_per_step > 0, f"prompts_per_step must be positive, got {self.prompts_per_step}"),
            (self.loss in GROUP_LOSSES, f"loss must be one of {', '.join(GROUP_LOSSES)}, got {self.loss!r}"),
            (self.clip_high > 0, f"clip_high must be positive, got {self.clip_high}"),
            (self.group_size >= 2, f"group_size must be >= 2 (the group is the baseline), got {self.group_size}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.beta >= 0, f"beta must be >= 0, got {self.beta}"),
            (self.temperature > 0, f"temperature must be > 0 to sample a group, got {self.temperature}"),
            (self.decay in ("cosine", "linear", "constant"), f"decay must be cosine|linear|constant: {self.decay!r}"),
        ]  # fmt: skip
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise DanluError("bad GRPO config: " + "; ".join(bad))
