"""Quick held-out checks used by the fine-tuning and alignment stages: greedy answers to SFT test records,
exact match per record kind, and the world's verifiable reward.

A thin layer over the one evaluation harness, `danlu.eval.world_eval` (what `danlu eval` runs): the same
prompts, the same answers (the greedy reply up to the end of the turn, cut at its first newline) and the same
exact match; this module adds only the world's verifiable reward and a few samples for the demo's report.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from danlu.eval.world_eval import exact_match_by_kind, sft_answers


def answers(
    model: nn.Module, tokenizer: Any, records: list[dict], max_new_tokens: int = 24, batch_size: int = 64,
    temperature: float = 0.0, seed: int | None = None,
) -> list[str]:  # fmt: skip
    """The model's reply to each SFT record's prompt, cut at the first newline and stripped (`sft_answers`)."""
    return sft_answers(model, tokenizer, records, max_new_tokens, batch_size, temperature, seed)


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
