"""RLHF-PPO: InstructGPT's step 3, with the notes' four models (notes 000 §RLHF).

    Actor      π_θ   the model being trained, initialised from the SFT model
    Critic     V_φ   predicts the return at every token, initialised from the reward model
    Reward     r     scores a whole answer (frozen)
    Reference  π_ref the SFT model (frozen): keeps the Actor from drifting ("训歪")

One step (the notes' four steps): (1) take a batch of prompts; (2) the Actor samples answers; (3) Critic, Reward
and Reference score prompt + answer: these are the *experiences* — old log_probs, ref_log_probs, values V_t,
per-token rewards R_t = −β(log π − log π_ref) (+ r(x, y) on the last token), advantages by the recursion
Adv_t = R_t + γV_{t+1} − V_t + γλAdv_{t+1}, returns = Adv + V (danlu.align.advantages); (4) a few epochs of
minibatch updates of Actor and Critic on those experiences:

    ratio_t     = exp(log π_θ(a_t|s_t) − log π_old(a_t|s_t))
    actor_loss  = mean_t max(−Adv_t · ratio_t, −Adv_t · clip(ratio_t, 1 − ε, 1 + ε))   (Schulman et al. 2017)
    critic_loss = ½ mean_t max((V_t − G_t)², (clip(V_t, V_old ± ε_v) − G_t)²)       G_t: returns

The notes' actor_loss = −Adv_t log P(A_t|S_t) is this loss's gradient at ratio = 1; the clip stops a step from
moving the policy far from the one that collected the data. β adapts to hold the KL near a target
(Ziegler et al. 2019): β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.align.advantages import gae, kl_penalized_rewards, whiten
from danlu.align.configs import PPOConfig
from danlu.align.losses import rloo_advantages
from danlu.align.online import OnlineObjective, step_indices
from danlu.align.reward import RewardModel
from danlu.align.rollout import Rollout, masked_mean, sample, sequence_log_probs
from danlu.errors import DanluError
from danlu.train.loop import StepWork, param_groups, run
from danlu.train.metrics import read_metrics
from danlu.tune.lora import finish_lora, wrap_lora
from danlu.tune.norm_tuning import train_only_norms


class AdaptiveKLController:
    """β that grows when the policy drifts past the target KL and shrinks below it (Ziegler et al. 2019)."""

    def __init__(self, init: float, target: float | None, horizon: int) -> None:
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target is None:
            return
        error = max(-0.2, min(0.2, kl / self.target - 1))
        self.value *= 1 + error * n / self.horizon


def actor_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
               mask: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Clipped surrogate (loss, fraction of clipped tokens); every tensor (B, T) over the action grid."""
    ratio = torch.exp(log_probs - old_log_probs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac.detach()


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range_value: float) -> torch.Tensor:  # fmt: skip
    """Clipped value loss ½·max((V − G)², (V_old + clip(V − V_old, ±ε_v) − G)²), masked mean."""
    clipped = old_values + (values - old_values).clamp(-clip_range_value, clip_range_value)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


@dataclass
class Experience:
    rollout: Rollout
    old_log_probs: torch.Tensor  # (B, T-1)
    ref_log_probs: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    scores: torch.Tensor  # (B,)
    kl: torch.Tensor  # (B, T-1)

    def select(self, idx: torch.Tensor) -> Experience:
        r = self.rollout
        sub = Rollout(r.input_ids[idx], r.attention_mask[idx], r.response_mask[idx], r.prompt_len,
                      [r.texts[i] for i in idx.tolist()])  # fmt: skip
        return Experience(sub, *(getattr(self, f)[idx] for f in
                                 ("old_log_probs", "ref_log_probs", "old_values", "advantages", "returns", "scores", "kl")))  # fmt: skip


def critic_values(critic: RewardModel, rollout: Rollout) -> torch.Tensor:
    """V(s_t) on the action grid (B, T − 1): the value read at column t scores the action at column t + 1."""
    return critic.values(rollout.input_ids, rollout.attention_mask, rollout.position_ids)[:, :-1]


@torch.no_grad()
def make_experience(actor, critic, reward_model, ref, tokenizer, prompts: list[str], cfg: PPOConfig,
                    beta: float, seed: int) -> Experience:  # fmt: skip
    G = cfg.samples_per_prompt
    rollout = sample(
        actor, tokenizer, prompts, cfg.max_new_tokens, cfg.temperature, seed=seed, num_samples=G
    )  # on its device; a prompt's G answers in consecutive rows
    mask = rollout.action_mask
    old_log_probs = sequence_log_probs(actor, rollout)
    ref_log_probs = sequence_log_probs(ref, rollout)
    old_values = critic_values(critic, rollout) * mask
    batch = (rollout.input_ids, rollout.attention_mask, rollout.position_ids, rollout.response_mask)
    if cfg.dense_reward:  # the likelihood term token by token, the head's score on the last token
        head, terms = reward_model.score_parts(*batch)  # (B,), (B, T - 1)
        scores = head + terms.sum(-1)
        # G > 1: the head's share minus the siblings' mean score (RLOO's baseline, Kool et al. 2019)
        task = head - (scores - rloo_advantages(scores, G)) if G > 1 else head
    else:
        scores = reward_model(*batch)  # (B,)
        task = rloo_advantages(scores, G) if G > 1 else scores  # minus the siblings' mean: unbiased
        task = whiten(task[:, None], torch.ones_like(task[:, None]))[:, 0] if cfg.whiten_scores else task
    rewards, kl = kl_penalized_rewards(old_log_probs, ref_log_probs, task, mask, rollout.last_action(), beta)
    if cfg.dense_reward:
        rewards = rewards + terms * mask  # each answer token's own likelihood term
    advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = whiten(advantages, mask)
    return Experience(rollout, old_log_probs, ref_log_probs, old_values, advantages, returns, scores, kl)


@torch.no_grad()
def evaluate_policy(actor, ref, reward_model, tokenizer, prompts: list[str], max_new_tokens: int = 24,
                    seed: int = 0, batch_size: int = 64, samples: int = 2) -> dict[str, float]:  # fmt: skip
    """On held-out prompts: the mean reward-model score of answers sampled at temperature 1 (`samples` per
    prompt: the policy's expected reward, what PPO maximises), of greedy answers, and the mean per-token
    KL(π ‖ π_ref) on the sampled answers (log π − log π_ref on tokens drawn from π is an unbiased estimate)."""
    sampled_scores, greedy_scores, kls = [], [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        greedy = sample(actor, tokenizer, chunk, max_new_tokens, temperature=0.0)
        greedy_scores += reward_model(
            greedy.input_ids, greedy.attention_mask, greedy.position_ids, greedy.response_mask
        ).tolist()
        for k in range(samples):
            r = sample(actor, tokenizer, chunk, max_new_tokens, temperature=1.0, seed=seed + 1000 * k + start)
            sampled_scores += reward_model(
                r.input_ids, r.attention_mask, r.position_ids, r.response_mask
            ).tolist()
            kl = (sequence_log_probs(actor, r) - sequence_log_probs(ref, r)) * r.action_mask
            kls += (kl.sum(1) / r.action_mask.sum(1).clamp(min=1)).tolist()
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"score": mean(sampled_scores), "greedy_score": mean(greedy_scores), "kl_per_token": mean(kls)}


class PPOObjective(OnlineObjective):
    """PPO in the one loop: a step is one rollout's experience (`make_experience`) and `ppo_epochs` passes of
    minibatch updates over it, each update one AdamW step of actor and critic (their losses summed: their
    parameters are disjoint, so each gets its own gradient; each clipped on its own)."""

    name = "ppo"
    progress_keys = ("score", "kl_per_token", "beta")
    curves = ("score", "kl_per_token", "eval_score", "eval_kl_per_token")
    curves_png = "ppo_curves.png"
    curves_title = "RLHF-PPO: reward-model score and per-token KL to the reference"

    def __init__(self, actor, critic, reward_model, ref, tokenizer, train_prompts: list[str], cfg: PPOConfig,
                 eval_prompts: list[str]) -> None:  # fmt: skip
        super().__init__(nn.ModuleDict({"actor": actor, "critic": critic}))
        self.actor, self.critic, self.reward_model, self.ref = actor, critic, reward_model, ref
        self.tokenizer, self.train_prompts, self.cfg, self.eval_prompts = (
            tokenizer,
            train_prompts,
            cfg,
            eval_prompts,
        )
        self.kl_ctl = AdaptiveKLController(
            cfg.init_kl_coef, cfg.target_kl if cfg.adaptive_kl else None, cfg.kl_horizon
        )
        self.hlines = {"kl_per_token": cfg.kl_bound, "eval_kl_per_token": cfg.kl_bound}

    def setup(self, device: torch.device) -> None:
        super().setup(device)
        for m in (self.ref, self.reward_model):  # frozen: only ever run under torch.no_grad()
            m.to(device).eval()

    def param_groups(self, cfg: PPOConfig) -> list[dict[str, Any]]:
        # The critic's floor is the same share of its peak as the actor's (lr / 10 unless --min-lr says).
        critic_min = cfg.critic_lr / 10 if cfg.min_lr == cfg.lr / 10 else cfg.critic_lr * cfg.min_lr / cfg.lr
        return [*param_groups(self.actor, cfg.weight_decay, cfg.lr, cfg.min_lr),
                *param_groups(self.critic, cfg.weight_decay, cfg.critic_lr, critic_min)]  # fmt: skip

    def clip_groups(self) -> dict[str, list[nn.Parameter]]:
        return {name: [p for p in m.parameters() if p.requires_grad]
                for name, m in (("actor", self.actor), ("critic", self.critic))}  # fmt: skip

    def work(self, step: int) -> StepWork:
        cfg = self.cfg
        n_prompts = cfg.batch_size // cfg.samples_per_prompt  # each sampled samples_per_prompt times
        prompts = [
            self.train_prompts[i] for i in step_indices(len(self.train_prompts), n_prompts, cfg.seed, step)
        ]
        beta = self.kl_ctl.value
        exp = make_experience(self.actor, self.critic, self.reward_model, self.ref, self.tokenizer, prompts, cfg,
                              beta, cfg.seed * 7919 + step)  # fmt: skip
        mask_all = exp.rollout.action_mask
        g = torch.Generator().manual_seed(cfg.seed * 31 + step)
        updates = []
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(cfg.batch_size, generator=g)
            for start in range(0, cfg.batch_size, cfg.minibatch_size):
                updates.append([exp.select(order[start : start + cfg.minibatch_size].to(self.device))])
        kl_token = masked_mean(exp.kl, mask_all)
        figures = {"score": exp.scores.mean(), "kl_per_token": kl_token, "kl_per_answer": exp.kl.sum(1).mean(),
                   "beta": beta, "answer_tokens": mask_all.sum(1).mean()}  # fmt: skip
        self.kl_ctl.update(kl_token.item(), cfg.batch_size)  # the next rollout's β (a rollout syncs anyway)
        return StepWork(updates, figures)

    def loss(self, model: nn.Module, mb: Experience) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = mb.rollout.action_mask
        log_probs = sequence_log_probs(self.actor, mb.rollout)
        a_loss, clipfrac = actor_loss(log_probs, mb.old_log_probs, mb.advantages, mask, self.cfg.clip_range)
        values = critic_values(self.critic, mb.rollout)
        c_loss = value_loss(values, mb.old_values, mb.returns, mask, self.cfg.clip_range_value)
        return a_loss + c_loss, {"actor_loss": a_loss, "critic_loss": c_loss, "clipfrac": clipfrac}

    def evaluate(self, step: int) -> dict[str, float]:
        if not self.eval_prompts:
            return {}
        ev = evaluate_policy(self.actor, self.ref, self.reward_model, self.tokenizer, self.eval_prompts,
                             self.cfg.max_new_tokens, self.cfg.seed)  # fmt: skip
        return {f"eval_{k}": v for k, v in ev.items()}


def ppo(
    actor: nn.Module, critic: RewardModel, reward_model: RewardModel, tokenizer: Any, train_prompts: list[str],
    out_dir: str | Path, cfg: PPOConfig | None = None, eval_prompts: list[str] | None = None,
    ref: nn.Module | None = None, lora: Any = None, show_progress: bool = True, base_name: str | None = None,
    on_step: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """Train `actor` (in place) against `reward_model` with PPO in the one training loop; write metrics.jsonl
    and the curves ppo_curves.png (score and KL) to `out_dir`. `ref` defaults to a frozen copy of the actor as
    given. lora: a LoRAConfig to train only low-rank adapters of the actor: saved alone to OUT/adapter (PEFT's
    layout, naming `base_name`), then merged into the actor in memory.
    on_step(step, record): the loop's per-step callback (experiments/overopt.py measures the actor there)."""
    cfg = cfg or PPOConfig()
    cfg = replace(cfg, show_progress=cfg.show_progress and show_progress)
    if not train_prompts:
        raise DanluError("PPO needs at least one training prompt")
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    if lora is not None and cfg.actor_params != "all":
        raise DanluError(f"LoRA trains its adapters; actor_params={cfg.actor_params!r} needs lora=None")
    ref = ref if ref is not None else copy.deepcopy(actor)
    wrap_lora(actor, lora)  # a no-op without a LoRA config
    objective = PPOObjective(
        actor, critic, reward_model, ref, tokenizer, train_prompts, cfg, eval_prompts or []
    )
    with train_only_norms(actor) if cfg.actor_params == "norms" else nullcontext():
        result = run(objective, cfg, out_dir, on_step=on_step)
    finish_lora(actor, lora, out_dir / "adapter", base_name)  # OUT/adapter, then merged in place
    actor.eval()
    summary: dict[str, Any] = {"config": asdict(cfg), "steps": cfg.max_steps, "seconds": result["seconds"]}
    first, last = result["first_eval"], result["last_eval"]
    if first and last:
        summary |= {
            "eval_score_before": first["eval_score"],
            "eval_score_after": last["eval_score"],
            "eval_greedy_score_before": first["eval_greedy_score"],
            "eval_greedy_score_after": last["eval_greedy_score"],
            "eval_kl_before": first["eval_kl_per_token"],
            "eval_kl_after": last["eval_kl_per_token"],
            "max_train_kl_per_token": max(
                r["kl_per_token"] for r in read_metrics(out_dir) if "kl_per_token" in r
            ),
        }
    return summary
