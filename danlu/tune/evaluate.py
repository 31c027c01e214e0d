"""Quick held-out checks used by the fine-tuning and alignment stages: greedy answers to SFT test records,
exact match per record kind, and the world's verifiable reward.

The metric is `danlu eval`'s (danlu.eval.world_eval): the prompt is the chat-formatted instruction, the answer
the greedy reply up to its first newline; the full gold output ("25岁。") and the bare answer ("25") both count.
Decoding stops at the end of the turn (`Tokenizer.end_of_turn_ids`), so a batch costs only as many steps as its longest reply.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


@torch.no_grad()
def answers(
    model: nn.Module, tokenizer: Any, records: list[dict], max_new_tokens: int = 24, batch_size: int = 64,
    temperature: float = 0.0, seed: int | None = None,
) -> list[str]:  # fmt: skip
    """The model's reply to each SFT record's prompt, cut at the first newline and stripped."""
    import danlu
    from danlu.data.formats import sft_prompt

    prompts = [sft_prompt(r, tokenizer) for r in records]
    out: list[str] = []
    was_training = model.training
    for start in range(0, len(prompts), batch_size):
        texts = danlu.generate(
            model, tokenizer, prompts[start : start + batch_size], max_new_tokens=max_new_tokens,
            temperature=temperature, seed=seed, stop_token_ids=tokenizer.end_of_turn_ids,
        )  # fmt: skip
        out.extend(t.strip().split("\n")[0].strip() for t in texts)
    model.train(was_training)
    return out


def exact_match_by_kind(records: list[dict], replies: list[str]) -> dict[str, float]:
    """{"overall": EM, kind: EM, ...}; accepted references are the record's output and its bare answer."""
    from danlu.eval.text import exact_match

    refs = [[r["output"]] + ([str(r["answer"])] if "answer" in r else []) for r in records]
    result = {"overall": exact_match(replies, refs)}
    kinds = sorted({str(r.get("kind", "all")) for r in records})
    for kind in kinds:
        idx = [i for i, r in enumerate(records) if str(r.get("kind", "all")) == kind]
        result[kind] = exact_match([replies[i] for i in idx], [refs[i] for i in idx])
    return result


def evaluate_sft(
    model: nn.Module, tokenizer: Any, records: list[dict], max_new_tokens: int = 24
) -> dict[str, Any]:
    """Exact match per kind and the mean verifiable reward (danlu.data.world.reward) on SFT test records."""
    from danlu.data.world import reward

    replies = answers(model, tokenizer, records, max_new_tokens)
    em = exact_match_by_kind(records, replies)
    rewards = [reward(r, a) if r.get("answer") else 0.0 for r, a in zip(records, replies)]
    by_kind: dict[str, list[float]] = {}
    for r, x in zip(records, rewards):
        by_kind.setdefault(str(r.get("kind", "all")), []).append(x)
    return {
        "exact_match": em,
        "reward": {
            "overall": sum(rewards) / len(rewards),
            **{k: sum(v) / len(v) for k, v in by_kind.items()},
        },
        "samples": [
            {
                "prompt": r.get("instruction", ""),
                "input": r.get("input", ""),
                "reference": r.get("output", ""),
                "reply": a,
            }
            for r, a in list(zip(records, replies))[:12]
        ],  # fmt: skip
    }
