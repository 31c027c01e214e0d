"""Multiple choice by log-likelihood, scored as lm-evaluation-harness scores it.

Each item is a query and a few choices; the model is never asked to generate. Instead every choice is scored
as a continuation of the prompt,

    ll_i = Σ_t log p(choice_i token t | prompt, choice_i tokens < t)

and the prediction is argmax_i ll_i (`acc`), or argmax_i ll_i / len(choice_i) with the length in characters
(`acc_norm`, which stops long answers from losing only because they have more tokens to pay for). The
continuation is `target_delimiter + choice` (a space by default), the few-shot examples are
`query + target_delimiter + answer` joined by `fewshot_delimiter` ("\\n\\n"), as in lm-evaluation-harness,
so a task's numbers here and there can be compared. Few-shot examples are drawn with a seeded generator and
never include the item itself.

Notation: B batch, T positions, V vocabulary.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from danlu.errors import DanluError

__all__ = [
    "MCItem",
    "MCResult",
    "mc_metrics",
    "fewshot_prompt",
    "loglikelihoods",
    "evaluate_multiple_choice",
]


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question: the query text, its choices and the index of the right one."""

    query: str
    choices: tuple[str, ...]
    gold: int

    def __post_init__(self) -> None:
        if not isinstance(self.query, str):
            raise DanluError(f"query: expected a string, got {type(self.query).__name__}")
        if len(self.choices) < 2:
            raise DanluError(
                f"choices: a multiple-choice item needs at least 2 choices, got {len(self.choices)} "
                f"for query {self.query[:60]!r}"
            )
        if any(not isinstance(c, str) or not c for c in self.choices):
            raise DanluError(f"choices: every choice must be a non-empty string, got {list(self.choices)!r}")
        if (
            isinstance(self.gold, bool)
            or not isinstance(self.gold, int)
            or not 0 <= self.gold < len(self.choices)
        ):
            raise DanluError(f"gold: must be a choice index in 0..{len(self.choices) - 1}, got {self.gold!r}")


@dataclass(frozen=True)
class MCResult:
    """Accuracies over the items and, per item, the choices' log-likelihoods."""

    acc: float
    acc_norm: float
    loglikelihoods: tuple[tuple[float, ...], ...]


def mc_metrics(lls: Sequence[float], choices: Sequence[str], gold: int) -> dict[str, float]:
    """`acc` and `acc_norm` of one item from its choices' log-likelihoods (module docstring)."""
    if len(lls) != len(choices):
        raise DanluError(f"lls: one log-likelihood per choice expected ({len(choices)}), got {len(lls)}")
    lls_arr = np.asarray(lls, dtype=np.float64)
    lengths = np.array([float(len(c)) for c in choices])
    return {
        "acc": float(int(np.argmax(lls_arr)) == gold),
        "acc_norm": float(int(np.argmax(lls_arr / lengths)) == gold),
    }


def fewshot_prompt(
    item: MCItem,
    pool: Sequence[MCItem],
    k: int,
    rng: random.Random,
    description: str = "",
    target_delimiter: str = " ",
    fewshot_delimiter: str = "\n\n",
) -> str:
    """`description` + k solved examples from `pool` (never `item`) + the item's query."""
    candidates = [ex for ex in pool if ex != item]
    if k < 0 or k > len(candidates):
        raise DanluError(
            f"k: {k} few-shot examples asked for, but the pool holds {len(candidates)} other items"
        )
    shots = rng.sample(candidates, k)
    parts = [ex.query + target_delimiter + ex.choices[ex.gold] for ex in shots]
    return description + "".join(p + fewshot_delimiter for p in parts) + item.query


def _encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids, split where lm-evaluation-harness splits them.

    Trailing spaces of the context move to the continuation, and the continuation's ids are taken from the
    encoding of the whole string, so a BPE merge across the boundary is tokenized as the model saw it.
    """
    n_spaces = len(context) - len(context.rstrip(" "))
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = list(tokenizer.encode(context + continuation))
    n_context = len(tokenizer.encode(context))
    return whole[:n_context], whole[n_context:]


def loglikelihoods(
    model: Any,
    tokenizer: Any,
    requests: Sequence[tuple[str, str]],
    batch_size: int = 8,
    max_length: int | None = None,
) -> list[tuple[float, bool]]:
    """For each (context, continuation): Σ log p(continuation | context) and whether greedy decoding agrees.

    Sequences are right-padded into batches (causal attention never looks at the padding after a position)
    and left-truncated to `max_length` (default: the model's context, `model.config.block_size`).
    """
    import torch

    from danlu.nn.logprobs import token_logprobs

    if max_length is None:
        max_length = int(getattr(getattr(model, "config", None), "block_size", 0) or 2048)
    pairs = []
    for i, (context, continuation) in enumerate(requests):
        ctx, cont = _encode_pair(tokenizer, context, continuation)
        if not cont:
            raise DanluError(f"requests[{i}]: the continuation {continuation!r} encodes to no tokens")
        ids = (ctx + cont)[-(max_length + 1) :]
        if len(ids) < 2:
            raise DanluError(f"requests[{i}]: needs at least one context token before the continuation")
        pairs.append((ids, min(len(cont), len(ids) - 1)))
    params = list(model.parameters()) if hasattr(model, "parameters") else []
    device = params[0].device if params else torch.device("cpu")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    results: list[tuple[float, bool]] = []
    try:
        with torch.no_grad():
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start : start + batch_size]
                T = max(len(ids) for ids, _ in chunk) - 1
                inputs = torch.zeros(len(chunk), T, dtype=torch.long, device=device)  # (B, T)
                labels = torch.zeros_like(inputs)
                scored = torch.zeros(len(chunk), T, dtype=torch.bool, device=device)
                for b, (ids, n_cont) in enumerate(chunk):
                    row = torch.tensor(ids, device=device)
                    inputs[b, : len(ids) - 1] = row[:-1]
                    labels[b, : len(ids) - 1] = row[1:]
                    scored[b, len(ids) - 1 - n_cont : len(ids) - 1] = True
                out = model(inputs)
                logits = getattr(out, "logits", out)  # (B, T, V)
                lp = token_logprobs(logits, labels, scored)  # (B, T)
                greedy = (logits.argmax(-1) == labels) | ~scored  # (B, T)
                for b in range(len(chunk)):
                    results.append((float(lp[b].sum()), bool(greedy[b].all())))
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    return results


def evaluate_multiple_choice(
    model: Any,
    tokenizer: Any,
    items: Sequence[MCItem],
    num_fewshot: int = 0,
    fewshot_pool: Sequence[MCItem] | None = None,
    seed: int = 1234,
    description: str = "",
    target_delimiter: str = " ",
    fewshot_delimiter: str = "\n\n",
    batch_size: int = 8,
) -> MCResult:
    """acc and acc_norm of `model` on `items`, with `num_fewshot` seeded examples from `fewshot_pool`."""
    if len(items) == 0:
        raise DanluError("items: is empty; pass at least one multiple-choice item")
    rng = random.Random(seed)
    requests, spans = [], []
    for item in items:
        prompt = fewshot_prompt(
            item, fewshot_pool or items, num_fewshot, rng, description, target_delimiter, fewshot_delimiter
        )
        spans.append((len(requests), len(item.choices)))
        requests.extend((prompt, target_delimiter + c) for c in item.choices)
    scored = loglikelihoods(model, tokenizer, requests, batch_size=batch_size)
    accs, norms, all_lls = [], [], []
    for item, (begin, n) in zip(items, spans, strict=True):
        lls = [ll for ll, _ in scored[begin : begin + n]]
        m = mc_metrics(lls, item.choices, item.gold)
        accs.append(m["acc"])
        norms.append(m["acc_norm"])
        all_lls.append(tuple(lls))
    return MCResult(sum(accs) / len(accs), sum(norms) / len(norms), tuple(all_lls))
