"""GRPO: group-relative policy optimisation with a verifiable reward (Shao et al. 2024, DeepSeekMath §4).

PPO needs a critic as large as the policy to turn one score per answer into per-token advantages. GRPO samples
G answers to each prompt and uses the group itself as the baseline:

    Adv_i = (r_i − mean(r_1..r_G)) / std(r_1..r_G)          the same for every token of answer i
    loss  = −1/G Σ_i 1/|y_i| Σ_t [ min(ρ_t Adv_i, clip(ρ_t, 1 ± ε) Adv_i) − β KL_t ]
    KL_t  = π_ref/π − log(π_ref/π) − 1    (an unbiased, always ≥ 0 estimate of KL(π ‖ π_ref))

ρ_t = π_θ/π_old on each token. `GRPOConfig.loss` (`--loss`) swaps this objective for one of its successors
(danlu.align.losses: dr_grpo, dapo, gspo, cispo; and rloo, REINFORCE with a leave-one-out baseline): each
changes the advantage, the normalisation or the clip, never the sampling. The reward here needs no model at
all: danlu.data.world.reward checks the answer (the arithmetic result, the fact's value) exactly, so nothing
can be "hacked" but the right answer.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from danlu.align.advantages import group_advantages
from danlu.align.configs import GRPOConfig
from danlu.align.losses import informative_groups, k3_kl, overlong_penalty, policy_loss, rloo_advantages
from danlu.align.online import OnlineObjective, step_indices
from danlu.align.rollout import sample, sequence_log_probs
from danlu.errors import DanluError
from danlu.train.loop import StepWork, run


def grpo_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, ref_log_probs: torch.Tensor,
              advantages: torch.Tensor, mask: torch.Tensor, beta: float, clip_range: float
              ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(loss, mean KL): per-token tensors (B, T), advantages (B,) — one per answer (`losses.policy_loss`)."""
    return policy_loss("grpo", log_probs, old_log_probs, ref_log_probs, advantages, mask, beta, clip_range)


def online_advantages(loss: str, rewards: torch.Tensor, G: int, old_log_probs: torch.Tensor,
                      ref_log_probs: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:  # fmt: skip
    """(N·G,) one advantage per answer for the --loss variant, from rewards (N·G,) in prompt order.

    grpo, dapo, gspo, cispo: (r − mean) / std over the group; dr_grpo: r − mean (Liu et al. 2025: the std
    over-weights nearly solved groups); rloo (Ahmadian et al. 2024): the reward carries the sequence KL,
    r − β Σ_t (log π_old − log π_ref), and the baseline is the mean of the other G − 1 answers."""
    if loss == "rloo":
        seq_kl = ((old_log_probs - ref_log_probs) * mask).sum(1)  # (N·G,) log π(y)/π_ref(y)
        return rloo_advantages(rewards - beta * seq_kl, G)
    return group_advantages(rewards, G, scale_by_std=loss != "dr_grpo")


@torch.no_grad()
def verifiable_accuracy(
    model: nn.Module, tokenizer: Any, records: list[dict], max_new_tokens: int = 16
) -> float:
    """Mean world reward of greedy answers (1 = the exact answer)."""
    from danlu.data.world import reward
    from danlu.tune.evaluate import answers

    replies = answers(model, tokenizer, records, max_new_tokens)
    return sum(reward(r, a) for r, a in zip(records, replies)) / len(records)


class GRPOObjective(OnlineObjective):
    """GRPO in the one loop: a step samples G answers to each of its prompts, scores them with the verifiable
    reward and turns the group's rewards into advantages; its `inner_epochs` updates reuse those samples."""

    name = "grpo"
    progress_keys = ("reward", "kl")
    curves = ("reward", "kl", "eval_accuracy")
    curves_png = "grpo_curves.png"
    curves_title = "GRPO: verifiable reward (train samples), KL to the reference, held-out greedy accuracy"

    def __init__(self, policy: nn.Module, ref: nn.Module, tokenizer: Any, records: list[dict], cfg: GRPOConfig,
                 eval_records: list[dict] | None, reward_fn: Any = None) -> None:  # fmt: skip
        super().__init__(policy)
        self.reward_fn = reward_fn  # None: the world's verifiable reward
        self.ref, self.tokenizer, self.records, self.cfg, self.eval_records = (
            ref,
            tokenizer,
            records,
            cfg,
            eval_records,
        )

    def setup(self, device: torch.device) -> None:
        super().setup(device)
        self.ref.to(device).eval()  # frozen: only ever run under torch.no_grad()

    def work(self, step: int) -> StepWork:
        from danlu.data.world import reward
        from danlu.tune.sft import prompt_text

        cfg, G, policy = self.cfg, self.cfg.group_size, self.model
        batch = [
            self.records[i] for i in step_indices(len(self.records), cfg.prompts_per_step, cfg.seed, step)
        ]
        group_records = [r for r in batch for _ in range(G)]  # each prompt G times, consecutively
        prompts = [prompt_text(r, self.tokenizer) for r in group_records]
        rollout = sample(
            policy, self.tokenizer, prompts, cfg.max_new_tokens, cfg.temperature, seed=cfg.seed * 7919 + step
        )
        scores = (
            self.reward_fn(group_records, rollout)
            if self.reward_fn is not None
            else [reward(r, y) for r, y in zip(group_records, rollout.texts)]
        )
        rewards = torch.as_tensor(scores, dtype=torch.float, device=self.device)
        mask = rollout.action_mask
        # DAPO's soft overlong punishment (off unless --overlong-buffer): on the reward, before the baseline
        task_rewards = rewards
        rewards = rewards + overlong_penalty(mask.sum(1), cfg.max_new_tokens, cfg.overlong_buffer)
        with torch.no_grad():
            old_log_probs = sequence_log_probs(policy, rollout)
            ref_log_probs = sequence_log_probs(self.ref, rollout)
        advantages = online_advantages(cfg.loss, rewards, G, old_log_probs, ref_log_probs, mask, cfg.beta)
        if cfg.loss == "dapo":  # dynamic sampling: a group whose answers all score the same has no signal
            keep = informative_groups(rewards, G).repeat_interleave(G)  # (N·G,)
            mask = mask * keep[:, None].to(mask.dtype)
        group = (rollout, old_log_probs, ref_log_probs, advantages, mask)
        figures = {
            "reward": task_rewards.mean(),
            "solved_groups": (task_rewards.view(-1, G).max(1).values > 0).float().mean(),
        }
        return StepWork([[group] for _ in range(cfg.inner_epochs)], figures)

    def loss(self, model: nn.Module, group: tuple) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rollout, old_log_probs, ref_log_probs, advantages, mask = group
        log_probs = sequence_log_probs(self.model, rollout)
        cfg = self.cfg
        if cfg.loss == "rloo":  # the KL is in the advantages (the reward); the loss is plain REINFORCE
            loss = -(advantages * (log_probs * mask).sum(1)).mean()
            kl = (k3_kl(log_probs, ref_log_probs) * mask).sum() / mask.sum().clamp(min=1)
            return loss, {"kl": kl.detach()}
        loss, kl = policy_loss(cfg.loss, log_probs, old_log_probs, ref_log_probs, advantages, mask,
                               cfg.beta, cfg.clip_range, cfg.upper_clip(), max_len=cfg.max_new_tokens)  # fmt: skip
        return loss, {"kl": kl}

    def evaluate(self, step: int) -> dict[str, float]:
        if not self.eval_records:
            return {}
        return {
            "eval_accuracy": verifiable_accuracy(
                self.model, self.tokenizer, self.eval_records, self.cfg.max_new_tokens
            )
        }


def grpo(
    policy: nn.Module, tokenizer: Any, train_records: list[dict], out_dir: str | Path, cfg: GRPOConfig | None = None,
    eval_records: list[dict] | None = None, ref: nn.Module | None = None, show_progress: bool = True,
    save_fn: Any = None, resume: bool = False, on_step: Any = None, reward_fn: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """Train `policy` in place on SFT-style records with an "answer" (scored by danlu.data.world.reward), in the
    one training loop; write metrics.jsonl and grpo_curves.png to `out_dir`.

    With `save_fn(model, dir)` the loop keeps a resumable checkpoint (at the end and every cfg.ckpt_interval
    rounds); `resume=True` continues it exactly: a round's rollouts are a pure function of (seed, step) and the
    weights. Pass the starting (SFT) model as `policy` when resuming: its copy is the reference.

    `reward_fn(records, rollout)` -> one score per answer replaces the verifiable reward (a reward model, as in
    experiments/overopt.py); `on_step(step, record)` is the loop's per-step callback."""
    cfg = cfg or GRPOConfig()
    cfg = replace(cfg, show_progress=cfg.show_progress and show_progress)
    records = [r for r in train_records if r.get("answer")]
    if not records:
        raise DanluError(
            "GRPO needs records with an 'answer' field for the verifiable reward (e.g. world sft_train)"
        )
    torch.manual_seed(cfg.seed)
    ref = ref if ref is not None else copy.deepcopy(policy)
    objective = GRPOObjective(policy, ref, tokenizer, records, cfg, eval_records, reward_fn)
    result = run(objective, cfg, out_dir, save_fn=save_fn, resume=resume, on_step=on_step)
    policy.eval()
    summary: dict[str, Any] = {"config": asdict(cfg), "steps": cfg.max_steps, "seconds": result["seconds"]}
    first, last = result["first_eval"], result["last_eval"]
    if first and last:
        summary |= {
            "eval_accuracy_before": first["eval_accuracy"],
            "eval_accuracy_after": last["eval_accuracy"],
        }
    return summary
