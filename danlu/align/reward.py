"""The reward model: a decoder with a scalar head, trained on human rankings (InstructGPT step 2; notes 000
§InstructGPT: "labelers rank the SFT model's answers, D > C > A = B; a reward model is trained so its scores
respect the rankings").

Notation: B sequences, T tokens, C channels, K responses per prompt, P pairs.

    r(x, y) = w · h_last + b      h_last: the final hidden state at the last token of prompt + response
    loss = −mean over pairs (y_c ≻ y_r) of log σ(r(x, y_c) − r(x, y_r))        (Ouyang et al. 2022, eq. 1)

A ranking of K responses gives all K(K−1)/2 ordered pairs; InstructGPT puts all of a prompt's pairs in one batch
(each response is scored once, not once per pair) — `ranking_pairs` and `PairwiseRewardLoss` do the same.
The same class is the PPO critic (notes 000: "the critic is initialised from the reward model"): `values`
returns a score at every token instead of the last one.

The likelihood feature (on by default). A ~1M-parameter decoder does not learn to tell a *wrong* fact from a
right one through the last hidden state alone from ~1k comparisons: on the demo's held-out pairs the pure head
reaches ≈0.8 (evasive and repetitive answers ≈1.0, wrong facts ≈0.6), memorising the training prompts. The
decoder's own language model already knows: its mean log-likelihood of the answer ranks ≈0.97 of those pairs
right (the quantity DPO shows is an implicit reward). So the score may also read it, with a learned weight α:

    r(x, y) = w · h_last + b + α · mean_{t ∈ y} log p_φ(y_t | x, y_<t)     (w = 0, α = 1 at the start)

p_φ is the reward model's own LM head, trained with everything else. `RewardModel(..., likelihood_feature=False)`
is the plain InstructGPT head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from danlu.errors import DanluError
from danlu.models.gpt import GPT
from danlu.nn.logprobs import token_logprobs


class RewardModel(nn.Module):
    """A GPT trunk, a linear head C -> 1 reading the final hidden states, and (optionally) the trunk's own
    mean log-likelihood of the answer with a learned weight (see the module docstring)."""

    def __init__(self, backbone: GPT, likelihood_feature: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.likelihood_feature = likelihood_feature
        self.head = nn.Linear(backbone.config.n_embd, 1)
        nn.init.zeros_(self.head.bias)
        if likelihood_feature:  # start from the LM's own judgement; the head learns what it misses
            nn.init.zeros_(self.head.weight)
            self.alpha = nn.Parameter(torch.tensor(1.0))
        else:
            nn.init.normal_(self.head.weight, std=1.0 / (backbone.config.n_embd + 1) ** 0.5)
            backbone.lm_head.requires_grad_(False)  # unused: keep the optimizer off it
            if backbone.config.tie_embeddings:
                backbone.wte.weight.requires_grad_(True)  # tied: the embedding itself still trains

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """The head at every position, (B, T): V_t for the critic."""
        h = self.backbone.hidden_states(input_ids, attention_mask, position_ids=position_ids)  # (B, T, C)
        return self.head(h).squeeze(-1).float()  # (B, T)

    def _head_and_logprobs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The head read at the last real token (B,), and log p(x_t | x_<t) for t = 1 .. T − 1 (B, T − 1) when
        the likelihood feature is on (else None), from one pass of the trunk."""
        h = self.backbone.hidden_states(input_ids, attention_mask, position_ids=position_ids)  # (B, T, C)
        if attention_mask is None or bool(attention_mask[:, -1].all()):
            last = torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
        else:
            last = attention_mask.long().cumsum(-1).argmax(-1)  # index of the last 1 in each row
        h_last = h.gather(1, last[:, None, None].expand(-1, 1, h.shape[-1])).squeeze(1)  # (B, C)
        score = self.head(h_last).squeeze(-1).float()
        if not self.likelihood_feature:
            return score, None
        return score, token_logprobs(self.backbone.lm_head(h[:, :-1]), input_ids[:, 1:])  # (B, T - 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, response_mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """r(x, y) per sequence, (B,). The head is read at the last real token (attention_mask gives it under
        right padding; under left padding it is the last column). response_mask (B, T) marks the answer's
        tokens, needed by the likelihood feature."""
        if self.likelihood_feature and response_mask is None:
            raise DanluError("this reward model reads the answer's likelihood: pass response_mask")
        score, logp = self._head_and_logprobs(input_ids, attention_mask, position_ids)
        if logp is None:
            return score
        m = response_mask[:, 1:].float()
        mean_logp = (logp * m).sum(-1) / m.sum(-1).clamp(min=1)
        return score + self.alpha * mean_logp

    def score_parts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                    response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """r(x, y) split over the answer's tokens for PPO's dense reward: (head (B,), terms (B, T − 1)) with
        head + terms.sum(-1) = forward(...). terms[:, t] = α · log p_φ(x_{t+1} | x_≤t) / |y| on the answer's
        tokens (the (B, T − 1) action grid of danlu.align.rollout), all zero without the likelihood feature.
        Rollouts only: right-padded answers after left-padded prompts."""
        head, logp = self._head_and_logprobs(input_ids, attention_mask, position_ids)
        m = response_mask[:, 1:].float()  # (B, T - 1)
        if logp is None:
            return head, torch.zeros_like(m)
        return head, self.alpha * logp * m / m.sum(-1, keepdim=True).clamp(min=1)

    def save(self, path: str | Path, tokenizer: Any = None) -> Path:
        """The trunk as a normal checkpoint (loadable by danlu.load) plus reward_head.safetensors."""
        from safetensors.torch import save_file

        from danlu.models.checkpoints import save_model

        path = Path(path)
        meta = {"kind": "danlu-reward-model", "head": "reward_head.safetensors",
                "likelihood_feature": self.likelihood_feature}  # fmt: skip
        save_model(
            self.backbone, path, tokenizer=tokenizer, extra_files={"reward_model.json": json.dumps(meta)}
        )
        head = {f"head.{k}": v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        if self.likelihood_feature:
            head["alpha"] = self.alpha.detach().cpu().reshape(1)
        save_file(head, str(path / "reward_head.safetensors"))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> RewardModel:
        from safetensors.torch import load_file

        from danlu.models.checkpoints import load_model

        path = Path(path)
        if not (path / "reward_head.safetensors").is_file():
            raise DanluError(
                f"{path} is not a reward model: reward_head.safetensors is missing (train one with `danlu reward`)"
            )
        meta_file = path / "reward_model.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        model = cls(load_model(path, device=device), likelihood_feature=meta.get("likelihood_feature", False))
        tensors = load_file(str(path / "reward_head.safetensors"), device=str(device))
        model.head.load_state_dict(
            {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")}
        )
        if model.likelihood_feature:
            with torch.no_grad():
                model.alpha.copy_(tensors["alpha"][0])
        return model.to(device)


# ------------------------------------------------------------------------------------------- data
def ranking_pairs(K: int) -> list[tuple[int, int]]:
    """All (better, worse) index pairs of a ranking of K responses, best first: K(K−1)/2 of them."""
    return list(combinations(range(K), 2))


def comparisons(records: list[dict]) -> list[tuple[str, list[str]]]:
    """(prompt, responses best first) from preference records (2 responses) or ranking records (K)."""
    out = []
    for i, r in enumerate(records):
        if "responses" in r:
            out.append((r["prompt"], list(r["responses"])))
        elif "chosen" in r and "rejected" in r:
            out.append((r["prompt"], [r["chosen"], r["rejected"]]))
        else:
            raise DanluError(
                f"record {i + 1} is neither a preference pair (prompt, chosen, rejected) nor a ranking "
                "(prompt, responses); see danlu.data.formats"
            )
    return out


def encode_response(tokenizer: Any, prompt: str, response: str, max_len: int) -> tuple[list[int], int]:
    """(ids, n_answer): the chat-formatted prompt + response + end of turn, the way SFT trained the policy to
    answer, and how many of the last ids are the answer. Long sequences keep their end (the answer is what is
    judged) and are cut from the left."""
    from danlu.data.formats import sft_prompt

    prompt_ids = tokenizer.encode(sft_prompt({"instruction": prompt, "output": response}, tokenizer))
    answer_ids = tokenizer.encode(response) + tokenizer.end_of_turn_ids[:1]
    ids = (prompt_ids + answer_ids)[-max_len:]
    return ids, min(len(answer_ids), len(ids) - 1)


@dataclass
class EncodedComparison:
    seqs: list[tuple[list[int], int]]  # K (ids, n_answer), best first


def encode_comparisons(records: list[dict], tokenizer: Any, max_len: int) -> list[EncodedComparison]:
    return [
        EncodedComparison([encode_response(tokenizer, p, y, max_len) for y in ys])
        for p, ys in comparisons(records)
    ]


def collate_comparisons(items: list[EncodedComparison], pad_id: int) -> dict[str, torch.Tensor]:
    """Every response of every item in one right-padded batch, and the (better, worse) rows of each pair."""
    seqs = [s for it in items for s in it.seqs]
    T = max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), T), dtype=torch.long)
    response_mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, (ids, n_answer) in enumerate(seqs):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        response_mask[i, len(ids) - n_answer : len(ids)] = 1
    better, worse, base = [], [], 0
    for it in items:
        for a, b in ranking_pairs(len(it.seqs)):
            better.append(base + a)
            worse.append(base + b)
        base += len(it.seqs)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "response_mask": response_mask,
        "better": torch.tensor(better),
        "worse": torch.tensor(worse),
    }


# ------------------------------------------------------------------------------------------- loss
def pairwise_loss(better_scores: torch.Tensor, worse_scores: torch.Tensor) -> torch.Tensor:
    """−mean log σ(r_better − r_worse) (Ouyang et al. 2022, eq. 1)."""
    return -F.logsigmoid(better_scores - worse_scores).mean()


@dataclass
class RewardOutput:
    loss: torch.Tensor
    accuracy: torch.Tensor
    scores: torch.Tensor


class PairwiseRewardLoss(nn.Module):
    """Wraps a RewardModel so the training loop can call `module(**batch).loss` on comparison batches."""

    def __init__(self, reward_model: RewardModel) -> None:
        super().__init__()
        self.reward_model = reward_model
        self.config = reward_model.config

    def forward(self, input_ids, attention_mask, response_mask, better, worse) -> RewardOutput:
        scores = self.reward_model(input_ids, attention_mask, response_mask=response_mask)  # (B,)
        loss = pairwise_loss(scores[better], scores[worse])
        accuracy = (scores[better] > scores[worse]).float().mean()
        return RewardOutput(loss=loss, accuracy=accuracy.detach(), scores=scores.detach())


@torch.no_grad()
def score_texts(reward_model: RewardModel, tokenizer: Any, prompts: list[str], responses: list[str],
                batch_size: int = 64, max_len: int | None = None) -> list[float]:  # fmt: skip
    """r(x, y) of each (prompt, response)."""
    max_len = max_len or reward_model.config.block_size
    pad = tokenizer.pad_id
    was_training = reward_model.training
    reward_model.eval()
    device = next(reward_model.parameters()).device
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        seqs = [encode_response(tokenizer, p, y, max_len)
                for p, y in zip(prompts[start : start + batch_size], responses[start : start + batch_size])]  # fmt: skip
        batch = collate_comparisons([EncodedComparison([s]) for s in seqs], pad)
        out += reward_model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                            response_mask=batch["response_mask"].to(device)).tolist()  # fmt: skip
    reward_model.train(was_training)
    return out


def pairwise_accuracy(reward_model: RewardModel, tokenizer: Any, records: list[dict]) -> dict[str, float]:
    """Held-out accuracy: the share of (better, worse) pairs the model scores in the right order, over all
    pairs of every record (a ranking of K gives K(K−1)/2), and per rejected kind where records name it."""
    from danlu.eval.text import preference_accuracy

    prompts, responses, index = [], [], []
    for p, ys in comparisons(records):
        base = len(responses)
        prompts += [p] * len(ys)
        responses += ys
        index.append((base, len(ys)))
    scores = score_texts(reward_model, tokenizer, prompts, responses)
    better, worse = [], []
    for base, K in index:
        for a, b in ranking_pairs(K):
            better.append(scores[base + a])
            worse.append(scores[base + b])
    return {"pairwise_accuracy": preference_accuracy(better, worse), "pairs": len(better)}


def train_reward_model(
    backbone: GPT, tokenizer: Any, train_records: list[dict], out_dir: str | Path, train_config: Any = None,
    val_records: list[dict] | None = None, eval_records: list[dict] | None = None, likelihood_feature: bool = True,
) -> tuple[RewardModel, dict[str, Any]]:  # fmt: skip
    """Train r(x, y) on preference pairs and/or rankings with the one training loop; save to OUT/checkpoint.

    batch_size counts comparisons (prompts) per micro-batch; each contributes all its K responses.
    eval_records: held-out comparisons whose pairwise accuracy is added to every evaluation."""
    from danlu.train.loop import TrainConfig, train
    from danlu.tune.sft import epoch_batch_indices, split_validation

    cfg = train_config or TrainConfig()
    if val_records is None:
        train_records, val_records = split_validation(train_records, seed=cfg.seed)
    train_items = encode_comparisons(train_records, tokenizer, cfg.block_size)
    val_items = encode_comparisons(val_records, tokenizer, cfg.block_size)
    pad = tokenizer.pad_id
    B = cfg.batch_size

    def batch_fn(split: str, step: int, micro: int) -> dict[str, torch.Tensor]:
        if split == "train":
            idx = epoch_batch_indices(len(train_items), B, cfg.seed, step, micro, cfg.grad_accum)
            return collate_comparisons([train_items[i] for i in idx], pad)
        start = (step * B) % len(val_items)
        return collate_comparisons(
            [val_items[(start + j) % len(val_items)] for j in range(min(B, len(val_items)))], pad
        )

    rm = RewardModel(backbone, likelihood_feature)
    wrapped = PairwiseRewardLoss(rm)

    def eval_fn(module: nn.Module) -> dict[str, float]:
        if not eval_records:
            return {}
        return {"heldout_accuracy": pairwise_accuracy(rm, tokenizer, eval_records)["pairwise_accuracy"]}

    summary = train(
        wrapped, batch_fn, cfg, out_dir, save_fn=lambda m, d: rm.save(d, tokenizer), eval_fn=eval_fn
    )
    rm.eval()
    return rm, summary
