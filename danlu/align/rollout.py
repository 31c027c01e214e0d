"""Rollouts: the policy answers a batch of prompts, and every token of every answer gets its log-probability.

Notation: B rollouts, P prompt length (left-padded), R response length, T = P + R, V vocab.

Notes 000 §RLHF: "feed the Actor a prompt and it writes a response; every response token has a log_prob under
the Actor (log_probs) and, feeding the same prompt + response to the Reference model, a ref_log_prob".
`sample` keeps token ids (never re-tokenised text, which could split differently), and a `Rollout` holds one
(B, T) batch laid out so every model scores it with the same forward:

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
import torch.nn.functional as F
from torch import nn

from danlu.errors import DanluError


@dataclass
class Rollout:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T) 1 on generated tokens (the stop token included)
    prompt_len: int  # P: responses start at this column
    texts: list[str]  # decoded responses (up to the stop token)

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
    """log p(x_{t+1} | x_≤t) for t = 0 .. T−2: logits (B, T, V), input_ids (B, T) -> (B, T − 1)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T − 1, V)
    return logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)


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


@torch.no_grad()
def sample(
    model: nn.Module, tokenizer: Any, prompts: list[str], max_new_tokens: int = 24, temperature: float = 1.0,
    top_k: int = 0, seed: int | None = None, stop_ids: list[int] | None = None,
) -> Rollout:  # fmt: skip
    """Sample one response per prompt and lay the batch out as a Rollout. temperature 0 is greedy.

    A plain KV-cached loop (prefill the left-padded prompts once, then one token per step) that needs only the
    GPT interface: `new_kv_cache`, and forward with attention_mask / kv_cache / position_ids."""
    if stop_ids is None:
        stop_ids = tokenizer.end_of_turn_ids + (
            [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_id
    prompt_ids = [tokenizer.encode(p) for p in prompts]
    longest = max(len(x) for x in prompt_ids)
    max_new_tokens = min(max_new_tokens, model.config.block_size - longest)
    if max_new_tokens < 1:
        raise DanluError(
            f"a {longest}-token prompt leaves no room to answer in a {model.config.block_size}-token context"
        )
    input_ids, prompt_mask = left_pad(prompt_ids, pad, device)  # (B, P)
    B, P = input_ids.shape
    mask = prompt_mask
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    cache = model.new_kv_cache(B, max_len=P + max_new_tokens)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
    logits = model(input_ids, attention_mask=mask, kv_cache=cache, position_ids=positions).logits[:, -1]
    next_pos = positions[:, -1:] + 1  # (B, 1)
    stops = torch.tensor(stop_ids, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []
    for i in range(max_new_tokens):
        if temperature == 0:
            tok = logits.argmax(-1)  # (B,)
        else:
            scaled = logits.float() / temperature
            if top_k > 0:
                kth = torch.topk(scaled, min(top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
                scaled = scaled.masked_fill(scaled < kth, float("-inf"))
            tok = torch.multinomial(scaled.softmax(-1), 1, generator=generator).squeeze(-1)
        tok = tok.masked_fill(done, pad)  # a finished row only pads
        steps.append(tok)
        done |= torch.isin(tok, stops)
        if bool(done.all()) or i == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=device)], dim=1)  # (B, P + i + 1)
        logits = model(tok[:, None], attention_mask=mask, kv_cache=cache, position_ids=next_pos).logits[:, -1]
        next_pos = next_pos + 1
    model.train(was_training)
    response = torch.stack(steps, dim=1)  # (B, R)
    # Keep each response up to and including its first stop token; what follows it is padding.
    is_stop = torch.isin(response, stops).long()
    after_stop = (is_stop.cumsum(-1) - is_stop) > 0  # strictly after the first stop
    response_mask = (~after_stop).long()  # (B, R)
    response = response.masked_fill(after_stop, pad)
    texts = []
    for row, keep in zip(response.tolist(), response_mask.tolist()):
        ids = [t for t, k in zip(row, keep) if k and t not in stop_ids]
        texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    return Rollout(
        input_ids=torch.cat([input_ids, response], dim=1),  # (B, T)
        attention_mask=torch.cat([prompt_mask, response_mask], dim=1),
        response_mask=torch.cat([torch.zeros_like(prompt_mask), response_mask], dim=1),
        prompt_len=P,
        texts=texts,
    )


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 (all of them, or along `dim`)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)
