"""DPO: learn straight from preference pairs, no reward model and no sampling (Rafailov et al. 2023; notes 000
§DPO: "use the human preference pairs directly to train the model").

The KL-constrained RLHF objective max E[r(x, y)] − β KL(π ‖ π_ref) has the closed-form optimum
π*(y|x) ∝ π_ref(y|x) exp(r(x, y)/β), so r(x, y) = β log π(y|x)/π_ref(y|x) + const: the policy *is* a reward
model ("implicit reward"), and the pairwise reward loss of InstructGPT becomes a loss on π itself:

    loss = −log σ( β [ (log π(y_c|x) − log π_ref(y_c|x)) − (log π(y_r|x) − log π_ref(y_r|x)) ] )

log π(y|x) is the sum of the response tokens' log-probs (prompt masked as in SFT). π_ref is the SFT model and
never changes, so its log-probs are computed once, before training, and travel with the batches.
Logged: the implicit rewards β(log π − log π_ref) of chosen and rejected answers, their margin, and the
preference accuracy (the share of pairs whose chosen answer gets the higher implicit reward).

`loss=` (`danlu dpo --loss`) swaps the objective for one of DPO's successors (formulas in danlu.align.losses),
on the same pairs: `ipo` (Azar et al. 2023, a squared loss to a finite margin), `kto` (Ethayarajh et al. 2024:
unpaired — each chosen answer is a desirable example, each rejected one undesirable; the reference point z₀
is estimated on mismatched pairs, prompt i with the chosen answer of pair i + 1), and the reference-free
`orpo` (Hong et al. 2024: SFT NLL + λ odds-ratio term, β is λ) and `simpo` (Meng et al. 2024: length-normalised
margin with β and γ). The reference log-probs are still computed once, for the held-out metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from danlu.align.losses import ipo_loss, kto_loss, orpo_loss, simpo_loss
from danlu.errors import DanluError
from danlu.nn.logprobs import token_logprobs
from danlu.tune.lora import finish_lora, save_adapter, wrap_lora
from danlu.tune.sft import IGNORE, SFTExample, collate, encode_messages, epoch_batch_indices, split_validation


def dpo_loss(
    policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(mean loss, chosen implicit rewards (N,), rejected implicit rewards (N,)) from summed log-probs (N,)."""
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


PREFERENCE_LOSSES = ("dpo", "ipo", "kto", "orpo", "simpo")
# β when none is given: DPO/IPO/KTO's 0.1; ORPO's λ = 0.1 (Hong et al. 2024 §4); SimPO's β = 2 (Meng et al. 2024)
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "kto": 0.1, "orpo": 0.1, "simpo": 2.0}


def check_preference_records(records: list[dict], where: str = "preference data") -> None:
    """Each record needs a prompt and two different, non-empty responses; DanluError names the record."""
    from danlu.data.formats import validate_record

    if not records:
        raise DanluError(f"{where}: no preference records")
    for i, r in enumerate(records):
        validate_record("preference", r, f"{where} record {i + 1}")


def response_log_probs(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ_t log π(x_t | x_<t) over the labelled (response) tokens of each row: (B, T) -> (B,)."""
    logits = model(input_ids).logits  # (B, T, V)
    targets = labels[:, 1:]
    return token_logprobs(logits[:, :-1], targets, targets != IGNORE).sum(-1)  # (B, T-1) -> (B,)


def encode_pairs(
    records: list[dict], tokenizer: Any, max_len: int, mismatched: bool = False
) -> list[tuple[SFTExample, ...]]:
    """(chosen, rejected) SFT-style examples: the chat-formatted prompt masked, the answer labelled.

    mismatched=True adds a third example, the prompt with the chosen answer of the next record: KTO's rows
    for its KL reference point (an answer the policy has no reason to prefer for that prompt)."""

    def one(prompt: str, response: str) -> SFTExample:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return encode_messages(messages, tokenizer, max_len)

    out = []
    for i, r in enumerate(records):
        row = (one(r["prompt"], r["chosen"]), one(r["prompt"], r["rejected"]))
        if mismatched:
            row += (one(r["prompt"], records[(i + 1) % len(records)]["chosen"]),)
        out.append(row)
    return out


def pair_batch(pairs: list[tuple[SFTExample, ...]], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows first, then rejected rows (then any mismatched rows), in one right-padded batch of k·N."""
    return collate([row[j] for j in range(len(pairs[0])) for row in pairs], pad_id)


@torch.no_grad()
def reference_log_probs(model: nn.Module, pairs: list[tuple[SFTExample, ...]], pad_id: int,
                        batch_size: int = 32) -> torch.Tensor:  # fmt: skip
    """log π_ref(y_c|x), log π_ref(y_r|x) (and the mismatched row's) for every pair, (N, k), computed once."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        b = pair_batch(chunk, pad_id)
        lp = response_log_probs(model, b["input_ids"].to(device), b["labels"].to(device)).cpu()
        out.append(lp.view(-1, len(chunk)).T)  # (k·n,) -> (n, k): column j holds the j-th example of each
    model.train(was)
    return torch.cat(out)


@dataclass
class DPOOutput:
    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


class DPOModel(nn.Module):
    """Wraps the policy so the training loop's `module(**batch).loss` is the preference loss (`loss`)."""

    def __init__(self, policy: nn.Module, beta: float = 0.1, sft_weight: float = 0.0, loss: str = "dpo",
                 gamma: float = 1.0, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        self.policy = policy
        self.beta, self.sft_weight, self.loss_name, self.gamma = beta, sft_weight, loss, gamma
        self.desirable_weight, self.undesirable_weight = desirable_weight, undesirable_weight
        self.config = getattr(policy, "config", None)

    def forward(self, input_ids, labels, ref_logps) -> DPOOutput:
        """input_ids, labels (k·N, T): chosen rows, rejected rows (and KTO's mismatched rows); ref_logps (N, k)."""
        logits = self.policy(input_ids).logits
        targets = labels[:, 1:]
        mask = targets != IGNORE
        picked = token_logprobs(logits[:, :-1], targets, mask)  # (k·N, T-1), 0 off the answers
        seq = picked.sum(-1)  # (k·N,) log π(y|x)
        lengths = mask.sum(-1).clamp(min=1)  # (k·N,) |y| in tokens
        N = ref_logps.shape[0]
        pc, pr, rc, rr = seq[:N], seq[N : 2 * N], ref_logps[:, 0], ref_logps[:, 1]
        cr, rj = (self.beta * (pc - rc)).detach(), (self.beta * (pr - rr)).detach()
        name, beta = self.loss_name, self.beta
        if name == "dpo":
            loss, cr, rj = dpo_loss(pc, pr, rc, rr, beta)
        elif name == "ipo":
            loss = ipo_loss(pc, pr, rc, rr, beta)
        elif name == "kto":
            # z₀: the policy's log-ratio on mismatched (prompt, answer) rows, a batch estimate of KL(π ‖ π_ref)
            kl = (seq[2 * N :] - ref_logps[:, 2]).mean()
            desirable = torch.arange(2 * N, device=seq.device) < N  # chosen rows desirable, rejected not
            loss = kto_loss(seq[: 2 * N], torch.cat([rc, rr]), desirable, kl, beta,
                            self.desirable_weight, self.undesirable_weight)  # fmt: skip
        elif name == "orpo":
            mean_logps = seq[: 2 * N] / lengths[: 2 * N]  # (2N,) mean token log-prob: ORPO's log P(y|x)
            loss, _ = orpo_loss(mean_logps[:N], mean_logps[N:], -mean_logps[:N], lam=beta)
        elif name == "simpo":
            loss = simpo_loss(pc, pr, lengths[:N], lengths[N : 2 * N], beta, self.gamma)
        else:
            raise DanluError(
                f"--loss: {name!r} is not a preference loss; choose one of {', '.join(PREFERENCE_LOSSES)}"
            )
        # optional NLL on the chosen answers keeps their likelihood up (Pang et al. 2024)
        if self.sft_weight > 0:
            loss = loss - self.sft_weight * picked[:N].sum() / mask[:N].sum().clamp(min=1)
        return DPOOutput(loss=loss, chosen_rewards=cr, rejected_rewards=rj)


@torch.no_grad()
def preference_metrics(policy: nn.Module, pairs: list[tuple[SFTExample, ...]], ref_logps: torch.Tensor,
                       pad_id: int, beta: float) -> dict[str, float]:  # fmt: skip
    """Held-out implicit-reward accuracy and margins of `policy` against fixed reference log-probs."""
    from danlu.eval.text import preference_accuracy

    pol = reference_log_probs(policy, pairs, pad_id)  # same computation, for the current policy
    chosen = beta * (pol[:, 0] - ref_logps[:, 0])
    rejected = beta * (pol[:, 1] - ref_logps[:, 1])
    return {
        "preference_accuracy": preference_accuracy(chosen.tolist(), rejected.tolist()),
        "likelihood_accuracy": preference_accuracy(pol[:, 0].tolist(), pol[:, 1].tolist()),
        "chosen_reward": chosen.mean().item(),
        "rejected_reward": rejected.mean().item(),
        "reward_margin": (chosen - rejected).mean().item(),
    }


def dpo(
    policy: nn.Module, tokenizer: Any, train_records: list[dict], out_dir: str | Path, train_config: Any = None,
    beta: float | None = None, eval_records: list[dict] | None = None, lora: Any = None, sft_weight: float = 0.0,
    val_records: list[dict] | None = None, loss: str = "dpo", gamma: float = 1.0, desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0, on_step: Any = None, base_name: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
    """Align `policy` (in place) on preference pairs with DPO (or `loss`: ipo, kto, orpo, simpo); the reference
    is the policy as given. `beta` defaults per loss (DEFAULT_BETA); `gamma` is SimPO's target margin;
    `desirable_weight` / `undesirable_weight` are KTO's λ_D / λ_U.

    Returns (policy, summary); the summary has held-out preference metrics before and after when
    eval_records are given. The model is saved to OUT/checkpoint; with `lora`, as in `danlu.tune.sft`, the
    result is the adapter alone (OUT/adapter, naming `base_name`), OUT/checkpoint holds the adapter of the
    training state, and the returned policy has the adapters merged in memory.
    on_step(step, record): the loop's per-step callback (experiments/overopt.py measures the policy there)."""
    from danlu.models.checkpoints import save_model
    from danlu.train.loop import TrainConfig, train

    cfg = train_config or TrainConfig()
    check_preference_records(train_records, "DPO training data")
    if eval_records:
        check_preference_records(eval_records, "DPO evaluation data")
    if loss not in PREFERENCE_LOSSES:
        raise DanluError(
            f"--loss: {loss!r} is not a preference loss; choose one of {', '.join(PREFERENCE_LOSSES)}"
        )
    beta = DEFAULT_BETA[loss] if beta is None else beta
    if not beta > 0:
        raise DanluError(f"{loss.upper()} beta must be > 0, got {beta}")
    if not (desirable_weight > 0 and undesirable_weight > 0):
        raise DanluError(f"KTO's weights must be > 0, got {desirable_weight}, {undesirable_weight}")
    if val_records is None:
        train_records, val_records = split_validation(train_records, seed=cfg.seed)
    pad = tokenizer.pad_id
    kto = loss == "kto"  # KTO's batches carry the mismatched rows of its KL reference point
    train_pairs = encode_pairs(train_records, tokenizer, cfg.block_size, mismatched=kto)
    val_pairs = encode_pairs(val_records, tokenizer, cfg.block_size, mismatched=kto)
    eval_pairs = encode_pairs(eval_records, tokenizer, cfg.block_size) if eval_records else []
    # π_ref = the policy before any update: its log-probs, once, for every pair we will ever score.
    train_ref = reference_log_probs(policy, train_pairs, pad)
    val_ref = reference_log_probs(policy, val_pairs, pad)
    eval_ref = reference_log_probs(policy, eval_pairs, pad) if eval_pairs else None
    before = preference_metrics(policy, eval_pairs, eval_ref, pad, beta) if eval_pairs else {}
    B = cfg.batch_size

    def batch_fn(split: str, step: int, micro: int) -> dict[str, torch.Tensor]:
        if split == "train":
            idx = epoch_batch_indices(len(train_pairs), B, cfg.seed, step, micro, cfg.grad_accum)
            pairs, ref = [train_pairs[i] for i in idx], train_ref[idx]
        else:
            idx = [((step * B) + j) % len(val_pairs) for j in range(min(B, len(val_pairs)))]
            pairs, ref = [val_pairs[i] for i in idx], val_ref[idx]
        return pair_batch(pairs, pad) | {"ref_logps": ref}

    wrap_lora(policy, lora)  # a no-op without a LoRA config
    wrapped = DPOModel(policy, beta, sft_weight, loss, gamma, desirable_weight, undesirable_weight)

    def eval_fn(module: nn.Module) -> dict[str, float]:
        return preference_metrics(policy, eval_pairs, eval_ref, pad, beta) if eval_pairs else {}

    def save_fn(m: nn.Module, d: Path) -> None:
        if lora is not None:  # the training state's model part: the adapter only (no implicit merge)
            save_adapter(policy, d, lora, base_model_name_or_path=base_name)
        else:
            save_model(policy, d, tokenizer=tokenizer)

    summary = train(wrapped, batch_fn, cfg, out_dir, save_fn=save_fn, eval_fn=eval_fn, on_step=on_step)
    finish_lora(policy, lora, Path(out_dir) / "adapter", base_name)  # OUT/adapter, then merged in place
    policy.eval()
    summary |= {"loss_variant": loss, "beta": beta}
    if eval_pairs:
        summary["before"] = before
        summary["after"] = preference_metrics(policy, eval_pairs, eval_ref, pad, beta)
    return policy, summary
