"""Rollouts: the policy answers a batch of prompts, and every token of every answer gets its log-probability.

Notation: B rollouts, P prompt length (left-padded), R response length, T = P + R, V vocab.

Notes 000 §RLHF: "feed the Actor a prompt and it writes a response; every response token has a log_prob under
the Actor (log_probs) and, feeding the same prompt + response to the Reference model, a ref_log_prob".
`sample` is one call of the decoding engine (each prompt prefilled once, however many samples it gets) and
keeps token ids (never re-tokenised text, which could split differently); a `Rollout` holds one (B, T) batch
laid out so every model scores it with the same forward:

    input_ids      [pad pad p1 p2 p3 | y1 y2 y3 <|im_end|> pad]      prompts left-padded, responses right-padded
    attention_mask [ 0   0  1  1  1  |  1  1  1     1       0 ]
    response_mask  [ 0   0  0  0  0  |  1  1  1     1       0 ]      the actions: tokens the policy chose

log_probs[:, t] = log π(x_{t+1} | x_≤t), so the action at column t+1 is scored at column t: `action_mask` is
response_mask[:, 1:], and every per-token tensor of PPO / GRPO is (B, T − 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from danlu.errors import DanluError
from danlu.nn.logprobs import token_logprobs


@dataclass
class Rollout:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T) 1 on generated tokens (the stop token included)
    prompt_len: int  # P: responses start at this column
    texts: list[str]  # decoded responses (up to the stop token)
    # (B, T − 1) log-prob of each action under the distribution it was sampled from (temperature / top-k
    # applied: the engine's), 0 off the actions. At temperature 1 without top-k it is the policy's log π.
    sample_log_probs: torch.Tensor | None = None

    @property
    def position_ids(self) -> torch.Tensor:
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): padding does not count

    @property
    def action_mask(self) -> torch.Tensor:
        """(B, T − 1) float: 1 where log_probs[:, t] scores a generated token."""
        return self.response_mask[:, 1:].float()

    def last_action(self) -> torch.Tensor:
        """(B,) column in the (B, T − 1) grid of each rollout's last generated token (where the score goes)."""
        m = self.action_mask
        return (m * torch.arange(m.shape[1], device=m.device)).argmax(-1)


def token_log_probs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(x_{t+1} | x_≤t) for t = 0 .. T−2: logits (B, T, V), input_ids (B, T) -> (B, T − 1). The one
    log-prob gather (`nn.logprobs.token_logprobs`) on the shifted grid."""
    return token_logprobs(logits[:, :-1], input_ids[:, 1:])


def sequence_log_probs(model: nn.Module, rollout: Rollout) -> torch.Tensor:
    """Per-token log-probs (B, T − 1) of a rollout under `model` (with grad if enabled)."""
    logits = model(
        rollout.input_ids, attention_mask=rollout.attention_mask, position_ids=rollout.position_ids
    ).logits
    return token_log_probs(logits, rollout.input_ids)


def left_pad(
    prompt_ids: list[list[int]], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (B, P): prompts right-aligned so every row's next token is column P."""
    P = max(len(x) for x in prompt_ids)
    input_ids = torch.full((len(prompt_ids), P), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(prompt_ids), P), dtype=torch.long)
    for i, x in enumerate(prompt_ids):
        input_ids[i, P - len(x) :] = torch.tensor(x)
        attention_mask[i, P - len(x) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def row_seeds(seed: int, rows: int) -> list[int]:
    """The sampling seed of each rollout row: distinct per row (a prompt's G samples must differ), a pure
    function of (seed, row), so row r of a seeded rollout is what the engine samples for that prompt alone
    with seed row_seeds(seed, rows)[r]."""
    return [(seed * 1_000_003 + r) % 2**62 for r in range(rows)]


@torch.no_grad()
def sample(
    model: nn.Module, tokenizer: Any, prompts: list[str], max_new_tokens: int = 24, temperature: float = 1.0,
    top_k: int = 0, seed: int | None = None, stop_ids: list[int] | None = None, num_samples: int = 1,
    share_prefill: bool = True,
) -> Rollout:  # fmt: skip
    """Sample `num_samples` responses per prompt (consecutive rows) and lay the batch out as a Rollout.
    temperature 0 is greedy.

    One call of the decoding engine (`generate.engine.run`, its static cache and lean forward) with the
    rollout's temperature and top-k as GenerationOptions: identical prompts (GRPO's G copies of a prompt, or
    num_samples > 1) are prefilled once and their KV cache copied to every sample. Row r samples with seed
    `row_seeds(seed, R)[r]` (without a seed, from torch's global generator). share_prefill=False prefills
    every row (the baseline of benchmarks/rollout_speed.py)."""
    from danlu.generate.engine import GenerationOptions, run

    if stop_ids is None:
        stop_ids = tokenizer.end_of_turn_ids + (
            [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        )
    was_training = model.training
    device = next(model.parameters()).device
    pad = tokenizer.pad_id
    prompt_ids = [ids for p in prompts for ids in [tokenizer.encode(p)] * num_samples]
    longest = max(len(x) for x in prompt_ids)
    max_new_tokens = min(max_new_tokens, model.config.block_size - longest)
    if max_new_tokens < 1:
        raise DanluError(
            f"a {longest}-token prompt leaves no room to answer in a {model.config.block_size}-token context"
        )
    opts = GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                             stop_token_ids=stop_ids, add_eos_stop=False)  # fmt: skip
    seeds = row_seeds(seed, len(prompt_ids)) if seed is not None and temperature > 0 else None
    try:
        done = run(model, tokenizer, prompt_ids, opts, row_seeds=seeds, share_prefill=share_prefill)
    finally:
        model.train(was_training)
    # Each response up to and including its stop token; what follows is padding.
    answers = [[*c.token_ids, *([c.stop_token_id] if c.stop_token_id is not None else [])] for c in done]
    logps = [[*c.logprobs, *([c.stop_logprob] if c.stop_token_id is not None else [])] for c in done]
    R = max(len(a) for a in answers)
    response = torch.full((len(done), R), pad, dtype=torch.long)
    response_mask = torch.zeros((len(done), R), dtype=torch.long)
    response_logps = torch.zeros((len(done), R))
    for i, (a, lp) in enumerate(zip(answers, logps)):
        response[i, : len(a)], response_mask[i, : len(a)] = torch.tensor(a), 1
        response_logps[i, : len(a)] = torch.tensor(lp)
    input_ids, prompt_mask = left_pad(prompt_ids, pad, device)  # (B, P)
    response, response_mask = response.to(device), response_mask.to(device)
    sampled = torch.cat([torch.zeros_like(prompt_mask, dtype=torch.float), response_logps.to(device)], 1)
    return Rollout(
        input_ids=torch.cat([input_ids, response], dim=1),  # (B, T)
        attention_mask=torch.cat([prompt_mask, response_mask], dim=1),
        response_mask=torch.cat([torch.zeros_like(prompt_mask), response_mask], dim=1),
        prompt_len=input_ids.shape[1],
        texts=[c.text for c in done],
        sample_log_probs=sampled[:, 1:],  # (B, T − 1) on the action grid
    )


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 (all of them, or along `dim`)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)
