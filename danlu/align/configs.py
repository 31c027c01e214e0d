"""Configs of the online alignment trainers (PPO, GRPO), kept free of torch so the CLI can build its flags
without importing it. Both extend the one training loop's `LoopConfig` (danlu.train.config: steps, schedule,
optimizer, clipping, logging, seed), so the shared flags are declared once; the fields here are what an online
trainer adds. Help texts are the fields' metadata; danlu.align.ppo / danlu.align.grpo give the formulas."""

from __future__ import annotations

from dataclasses import dataclass

from danlu.flags import option
from danlu.train.config import LoopConfig, default

GROUP_LOSSES = ("grpo", "dr_grpo", "dapo", "gspo", "cispo")
# The GRPO trainer's --loss: the group losses (danlu.align.losses), or RLOO's leave-one-out REINFORCE.
ONLINE_LOSSES = (*GROUP_LOSSES, "rloo")
# The clip-higher upper epsilon a variant's paper uses when --clip-high is not given (DAPO §3.1: 0.28; CISPO
# clips the IS weight the same way); the others clip symmetrically at --clip-range.
CLIP_HIGH = {"dapo": 0.28, "cispo": 0.28}
ACTOR_PARAMS = ("all", "norms")  # PPOConfig.actor_params


@dataclass
class PPOConfig(LoopConfig):
    # Of LoopConfig's defaults the online trainers change: short runs, no weight decay, every round logged (a
    # rollout waits for the host at every token anyway); warmup_steps stays None: 5% of the rounds.
    max_steps: int = default(LoopConfig, "max_steps", 40)
    lr: float = default(LoopConfig, "lr", 3e-5)
    decay: str = default(LoopConfig, "decay", "constant")
    weight_decay: float = default(LoopConfig, "weight_decay", 0.0)
    eval_interval: int = default(LoopConfig, "eval_interval", 10)
    log_interval: int = default(LoopConfig, "log_interval", 1)
    seed: int = default(LoopConfig, "seed", 0)
    batch_size: int = option(32, "prompts per rollout")
    minibatch_size: int = option(16, "prompts per PPO update")
    ppo_epochs: int = option(2, "passes over each rollout")
    critic_lr: float = option(3e-4, "learning rate of the critic (a fresh head that must catch up fast)")
    init_kl_coef: float = option(0.1, "beta: weight of the per-token KL penalty to the reference")
    adaptive_kl: bool = option(True, "adapt beta toward --target-kl (Ziegler et al. 2019)")
    target_kl: float = option(0.05, "nats per token the adaptive beta aims at")
    kl_horizon: int = option(400, "horizon of the adaptive-KL controller, in samples")
    kl_bound: float = option(0.2, "the bound the report checks the mean per-token KL against")
    gamma: float = option(1.0, "discount of the returns, in [0, 1]")
    lam: float = option(0.95, "GAE lambda, in [0, 1]")
    clip_range: float = option(0.2, "PPO ratio clip epsilon")
    clip_range_value: float = option(0.2, "clip of the value-function update")
    whiten_advantages: bool = option(True, "normalise advantages to mean 0, std 1 per rollout")
    # A reward model's scores have no fixed scale (here their spread is ~0.3), so a fixed β weighs the KL against
    # a reward of unknown size; whitened, β·KL is measured in reward standard deviations.
    whiten_scores: bool = option(False, "normalise the reward-model scores to mean 0, std 1 per rollout")
    # A likelihood-feature reward model's score is a mean over the answer's tokens: paid token by token, each
    # token's own term reaches its advantage directly instead of through the critic (same return from the start).
    dense_reward: bool = option(
        False, "pay the reward model's likelihood term per answer token, not all at the end"
    )
    # One answer per prompt leaves the critic, which sees each prompt about once, as the only baseline; G answers
    # of a prompt give each one the mean of its G − 1 siblings to beat (RLOO's leave-one-out, Kool et al. 2019), an action-free
    # baseline that removes the prompt's own difficulty from the reward.
    samples_per_prompt: int = option(
        1, "answers sampled per prompt in a rollout (G > 1: leave-one-out baseline)"
    )
    # Which of the actor's parameters PPO trains. "norms": its normalisation gains alone (danlu.tune.norm_tuning):
    # on the demo's model all-weights PPO raised the proxy score but not gold; the gains turned the same KL into
    # sharpening that raised both (experiments/README.md, "PPO's gain over SFT").
    actor_params: str = option(
        "all", "actor parameters PPO trains: all, or norms (the norm gains alone)", choices=ACTOR_PARAMS
    )
    max_new_tokens: int = option(24, "longest sampled answer, in tokens")
    temperature: float = option(1.0, "sampling temperature of the rollouts (> 0)")

    what = "PPO"

    def problems(self) -> list[str]:
        checks = [
            (self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}"),
            (0 < self.minibatch_size <= self.batch_size, f"minibatch_size must be in [1, batch_size], got {self.minibatch_size}"),
            (self.critic_lr > 0, f"learning rates must be positive, got {self.lr}, {self.critic_lr}"),
            (self.init_kl_coef >= 0, f"init_kl_coef must be >= 0, got {self.init_kl_coef}"),
            (0 <= self.gamma <= 1 and 0 <= self.lam <= 1, f"gamma and lam must be in [0, 1], got {self.gamma}, {self.lam}"),
            (self.clip_range > 0, f"clip_range must be > 0, got {self.clip_range}"),
            (self.temperature > 0, f"temperature must be > 0 to sample rollouts, got {self.temperature}"),
            (self.actor_params in ACTOR_PARAMS,  # choices= covers the flag; this, a config built in Python
             f"actor_params must be one of {', '.join(ACTOR_PARAMS)}, got {self.actor_params!r}"),
            (self.samples_per_prompt >= 1 and self.batch_size % self.samples_per_prompt == 0,
             f"samples_per_prompt must be >= 1 and divide batch_size {self.batch_size}, got {self.samples_per_prompt}"),
            (not (self.dense_reward and self.whiten_scores), "dense_reward and whiten_scores exclude each other: "
             "whitening needs the whole score at once; pick one"),
        ]  # fmt: skip
        return super().problems() + [msg for ok, msg in checks if not ok]


@dataclass
class GRPOConfig(LoopConfig):
    max_steps: int = default(LoopConfig, "max_steps", 40)
    lr: float = default(LoopConfig, "lr", 2e-5)
    weight_decay: float = default(LoopConfig, "weight_decay", 0.0)
    eval_interval: int = default(LoopConfig, "eval_interval", 10)
    log_interval: int = default(LoopConfig, "log_interval", 1)
    seed: int = default(LoopConfig, "seed", 0)
    prompts_per_step: int = option(16, "prompts sampled per round")
    group_size: int = option(8, "G answers per prompt (the group is the baseline; >= 2)")
    # 1: ρ = 1, the clip never bites; > 1 reuses the samples
    inner_epochs: int = option(1, "updates per sampled batch (1: the ratio is 1, the clip never bites)")
    beta: float = option(0.04, "weight of the KL term to the reference (DeepSeekMath: 0.04)")
    clip_range: float = option(0.2, "PPO ratio clip epsilon")
    # The loss variant (danlu.align.losses): the five group losses, or RLOO's REINFORCE
    loss: str = option(
        "grpo",
        "loss variant (danlu.align.losses): grpo (Shao et al. 2024), dr_grpo (Liu et al. 2025: no std, constant "
        "normaliser), dapo (Yu et al. 2025: token-level, clip-higher, dynamic sampling; its paper uses --beta 0), "
        "gspo (Zheng et al. 2025: sequence-level ratio), cispo (MiniMax-M1: clipped IS weight), rloo "
        "(Ahmadian et al. 2024: leave-one-out REINFORCE, KL in the reward)",
        choices=ONLINE_LOSSES,
    )
    clip_high: float | None = option(
        None,
        "upper ratio clip epsilon (none: 0.28 for dapo and cispo, DAPO's clip-higher; else --clip-range)",
    )
    overlong_buffer: int = option(
        0,
        "DAPO's soft overlong punishment: the last N tokens before --max-new-tokens cost up to 1 reward (0: off)",
    )
    max_new_tokens: int = option(16, "longest sampled answer, in tokens")
    temperature: float = option(1.0, "sampling temperature of the rollouts (> 0)")

    what = "GRPO"

    def problems(self) -> list[str]:
        checks = [
            (self.prompts_per_step > 0, f"prompts_per_step must be positive, got {self.prompts_per_step}"),
            (self.loss in ONLINE_LOSSES, f"loss must be one of {', '.join(ONLINE_LOSSES)}, got {self.loss!r}"),
            (self.clip_high is None or self.clip_high > 0, f"clip_high must be positive, got {self.clip_high}"),
            (0 <= self.overlong_buffer < self.max_new_tokens,
             f"overlong_buffer must be in [0, max_new_tokens), got {self.overlong_buffer}"),
            (self.loss != "rloo" or self.inner_epochs == 1,
             f"rloo is on-policy REINFORCE: it needs inner_epochs 1, got {self.inner_epochs}"),
            (self.group_size >= 2, f"group_size must be >= 2 (the group is the baseline), got {self.group_size}"),
            (self.beta >= 0, f"beta must be >= 0, got {self.beta}"),
            (self.temperature > 0, f"temperature must be > 0 to sample a group, got {self.temperature}"),
        ]  # fmt: skip
        return super().problems() + [msg for ok, msg in checks if not ok]

    def upper_clip(self) -> float:
        """The upper ratio clip epsilon: --clip-high, else the variant's paper default, else --clip-range."""
        return self.clip_high if self.clip_high is not None else CLIP_HIGH.get(self.loss, self.clip_range)
