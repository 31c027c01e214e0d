"""GRPO: group-relative policy optimisation with a verifiable reward (Shao et al. 2024, DeepSeekMath §4).

PPO needs a critic as large as the policy to turn one score per answer into per-token advantages. GRPO samples
G answers to each prompt and uses the group itself as the baseline:

    Adv_i = (r_i − mean(r_1..r_G)) / std(r_1..r_G)          the same for every token of answer i
    loss  = −1/G Σ_i 1/|y_i| Σ_t [ min(ρ_t Adv_i, clip(ρ_t, 1 ± ε) Adv_i) − β KL_t ]
    KL_t  = π_ref/π − log(π_ref/π) − 1    (an unbiased, always ≥ 0 estimate of KL(π ‖ π_ref))

ρ_t = π_θ/π_old on each token. The reward here needs no model at all: danlu.data.world.reward checks the
answer (the arithmetic result, the fact's value) exactly, so nothing can be "hacked" but the right answer.
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
from danlu.align.losses import informative_groups, policy_loss
from danlu.align.online import OnlineObjective, step_indices
from danlu.align.rollout import sample, sequence_log_probs
from danlu.errors import DanluError
from danlu.train.loop import StepWork, run


def grpo_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, ref_log_probs: torch.Tensor,
              advantages: torch.Tensor, mask: torch.Tensor, beta: float, clip_range: float
              ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(loss, mean KL): per-token tensors (B, T), advantages (B,) — one per answer (`losses.policy_loss`)."""
    return policy_loss("grpo", log_probs, old_log_probs, ref_log_probs, advantages, mask, beta, clip_range)


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
                 eval_records: list[dict] | None) -> None:  # fmt: skip
        super().__init__(policy)
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
        rewards = torch.tensor(
            [reward(r, y) for r, y in zip(group_records, rollout.texts)], device=self.device
        )
        # Dr. GRPO does not divide by the group's std; DAPO drops groups with no signal (all rewards equal)
        advantages = group_advantages(rewards, G, scale_by_std=cfg.loss != "dr_grpo")  # (N·G,)
        mask = rollout.action_mask
        if cfg.loss == "dapo":
            keep = informative_groups(rewards, G).repeat_interleave(G)  # (N·G,)
            mask = mask * keep[:, None].to(mask.dtype)
        with torch.no_grad():
            old_log_probs = sequence_log_probs(policy, rollout)
            ref_log_probs = sequence_log_probs(self.ref, rollout)
        group = (rollout, old_log_probs, ref_log_probs, advantages, mask)
        figures = {
            "reward": rewards.mean(),
            "solved_groups": (rewards.view(-1, G).max(1).values > 0).float().mean(),
        }
        return StepWork([[group] for _ in range(cfg.inner_epochs)], figures)

    def loss(self, model: nn.Module, group: tuple) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rollout, old_log_probs, ref_log_probs, advantages, mask = group
        log_probs = sequence_log_probs(self.model, rollout)
        cfg = self.cfg
        loss, kl = policy_loss(cfg.loss, log_probs, old_log_probs, ref_log_probs, advantages, mask,
                               cfg.beta, cfg.clip_range, cfg.clip_high, max_len=cfg.max_new_tokens)  # fmt: skip
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
    save_fn: Any = None, resume: bool = False, on_step: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """Train `policy` in place on SFT-style records with an "answer" (scored by danlu.data.world.reward), in the
    one training loop; write metrics.jsonl and grpo_curves.png to `out_dir`.

    With `save_fn(model, dir)` the loop keeps a resumable checkpoint (at the end and every cfg.ckpt_interval
    rounds); `resume=True` continues it exactly: a round's rollouts are a pure function of (seed, step) and the
    weights. Pass the starting (SFT) model as `policy` when resuming: its copy is the reference."""
    cfg = cfg or GRPOConfig()
    cfg = replace(cfg, show_progress=cfg.show_progress and show_progress)
    records = [r for r in train_records if r.get("answer")]
    if not records:
        raise DanluError(
            "GRPO needs records with an 'answer' field for the verifiable reward (e.g. world sft_train)"
        )
    torch.manual_seed(cfg.seed)
    ref = ref if ref is not None else copy.deepcopy(policy)
    objective = GRPOObjective(policy, ref, tokenizer, records, cfg, eval_records)
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
