"""What a pretrained model knows of the world, asked without instructions.

Three probes, each on held-in facts (stated in pretraining) and held-out facts (never stated anywhere a model
trains on), so a reader sees what pretraining taught and what it could not:

- multiple choice by log-likelihood (`danlu.eval.choice`): the fact's statement up to its object, with the
  true object and three others of the same relation as choices — chance is 1/4;
- greedy completion: does the model, given "The capital of Zorvia is ", continue with "Velmar."?
- arithmetic: greedy completion of "a op b =" for problems of the pretraining distribution.

Fact queries that two facts complete ("Hasezo is" → an age or a job) are left out (`unambiguous`), and
completion heals the prompt's last token (`_Healer`: BPE merges Chinese answers into the query's last token).

Held-out accuracy near chance is the expected result, not a failure: the notes' point that knowledge comes from
pretraining (and, 004, that fine-tuning does not add it) starts here.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from danlu.errors import DanluError
from danlu.eval.choice import MCItem, evaluate_multiple_choice

__all__ = ["KnowledgeProbe", "probe_knowledge", "unambiguous"]


@dataclass(frozen=True)
class KnowledgeProbe:
    mc_heldin: float
    mc_heldout: float
    chance: float
    completion_heldin: float
    completion_heldout: float
    arithmetic: float
    n_items: dict[str, int]
    ambiguous_dropped: int = 0  # queries left out because two facts complete them (`unambiguous`)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mc_heldin": self.mc_heldin,
            "mc_heldout": self.mc_heldout,
            "chance": self.chance,
            "completion_heldin": self.completion_heldin,
            "completion_heldout": self.completion_heldout,
            "arithmetic": self.arithmetic,
            "n_items": self.n_items,
            "ambiguous_dropped": self.ambiguous_dropped,
        }


def unambiguous(records: list[dict]) -> list[dict]:
    """The records whose query only one fact completes.

    The world states a person's age and job with the same start ("Hasezo is 75 years old.", "Hasezo is a
    pilot."), an animal's colour and size too ("The meza is white.", "The meza is a large animal."): such a query
    has two true continuations, so greedy completion can be right and still miss the one answer the record
    holds, and multiple choice mixes in the other fact's likelihood. Judged on the queries alone (all facts,
    held-in and held-out alike), never on what a model answers.
    """
    answers: dict[str, set[str]] = {}
    for r in records:
        answers.setdefault(r["query"], set()).add(r["answer"])
    return [r for r in records if len(answers[r["query"]]) == 1]


class _Healer:
    """Token healing (the `guidance` library's name for it): back the prompt up by its last token and let the
    model's first step pick the best token that starts with that token's text.

    Why: byte-level BPE merges across the point where a query stops. The demo's tokenizer writes
    "薇帕最喜欢的颜色是橙色" as 薇帕 | 最喜欢的颜色是橙色, so the query "薇帕最喜欢的颜色是" ends on the token
    最喜欢的颜色是, which in pretraining is almost never followed by a colour as a token of its own: asked that
    way the model answers from a prompt it never saw. Healed, its first step chooses among 最喜欢的颜色是橙色,
    最喜欢的颜色是白色, ... (and 最喜欢的颜色是 itself), as it would in the sentence. Only the prompt and the
    vocabulary are used, never the answer.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        # a lone byte of a multi-byte character decodes to U+FFFD: such a token never starts a healed text
        self.pieces = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
        self._allowed: dict[str, list[int]] = {}

    def allowed(self, text: str) -> list[int]:
        if text not in self._allowed:
            self._allowed[text] = [
                i for i, piece in enumerate(self.pieces) if piece.startswith(text) and "\ufffd" not in piece
            ]
        return self._allowed[text]

    def heal(self, model: Any, prompts: list[str]) -> list[str]:
        """For each prompt, the text its healed first token adds after the prompt ("" when not healed)."""
        import torch

        rows = []  # (head ids, allowed next ids, text of the removed token)
        for prompt in prompts:
            ids = list(self.tokenizer.encode(prompt))
            last = self.pieces[ids[-1]] if len(ids) >= 2 else ""
            allowed = self.allowed(last) if last and "\ufffd" not in last else []
            rows.append((ids[:-1], allowed, last) if allowed else None)
        extra = [""] * len(prompts)
        todo = [i for i, row in enumerate(rows) if row is not None]
        if not todo:
            return extra
        device = next(model.parameters()).device
        T = max(len(rows[i][0]) for i in todo)
        inputs = torch.zeros(len(todo), T, dtype=torch.long, device=device)  # (B, T), right-padded
        for b, i in enumerate(todo):
            inputs[b, : len(rows[i][0])] = torch.tensor(rows[i][0], device=device)
        with torch.no_grad():
            out = model(inputs)
        logits = getattr(out, "logits", out)  # (B, T, V)
        for b, i in enumerate(todo):
            head, allowed, last = rows[i]
            scores = logits[b, len(head) - 1, allowed]  # the next-token logits of the allowed tokens only
            extra[i] = self.pieces[allowed[int(scores.argmax())]][len(last) :]
        return extra


def _completion_accuracy(
    model: Any, tokenizer: Any, prompts: list[str], answers: list[str], batch: int
) -> float:
    from danlu.generate.engine import generate

    healer = _Healer(tokenizer)
    hits = 0
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        extra = healer.heal(model, chunk)
        outs = generate(
            model, tokenizer, [p + e for p, e in zip(chunk, extra)], max_new_tokens=12, temperature=0.0
        )
        for e, text, answer in zip(extra, outs, answers[start : start + batch], strict=True):
            # the answer, then no further digit: "1" must not count for "12"
            hits += re.match(re.escape(answer.strip()) + r"(?!\d)", (e + text).strip()) is not None
    return hits / len(prompts)


def probe_knowledge(
    model: Any, tokenizer: Any, world: Any, n_per_group: int = 200, seed: int = 0, batch_size: int = 16
) -> KnowledgeProbe:
    """Run the three probes on up to `n_per_group` items each (sampled with `seed`)."""
    from danlu.data.world.tasks import N_CHOICES
    from danlu.data.world.text import arith_problem

    if n_per_group < 1:
        raise DanluError(f"n_per_group: must be at least 1, got {n_per_group}")
    rng = random.Random(seed)
    every = world.knowledge_records()
    clear = unambiguous(every)
    groups = {}
    for name, heldout in (("heldin", False), ("heldout", True)):
        records = [r for r in clear if r["heldout"] == heldout]
        if not records:
            raise DanluError(f"world: has no {'held-out' if heldout else 'held-in'} facts to probe")
        groups[name] = rng.sample(records, min(n_per_group, len(records)))
    mc = {}
    completion = {}
    for name, records in groups.items():
        items = [MCItem(r["query"], tuple(r["choices"]), r["gold"]) for r in records]
        mc[name] = evaluate_multiple_choice(
            model, tokenizer, items, target_delimiter="", batch_size=batch_size
        ).acc
        # The query without its trailing space ("The capital of Zorvia is"): byte-level BPE attaches a word's
        # leading space to the word (" Velmar"), so a prompt ending in a lone " " token asks the model to go on
        # from a token it rarely saw there (held-in completion 0.22 with it, 0.48 without, on the demo's model).
        completion[name] = _completion_accuracy(
            model,
            tokenizer,
            [r["query"].rstrip(" ") for r in records],
            [r["answer"] for r in records],
            batch_size,
        )
    problems = [arith_problem(rng) for _ in range(n_per_group)]
    arithmetic = _completion_accuracy(
        model,
        tokenizer,
        [f"{a} {op} {b} =" for a, op, b, _ in problems],
        [str(r) for *_, r in problems],
        batch_size,
    )
    return KnowledgeProbe(
        mc_heldin=mc["heldin"],
        mc_heldout=mc["heldout"],
        chance=1.0 / N_CHOICES,
        completion_heldin=completion["heldin"],
        completion_heldout=completion["heldout"],
        arithmetic=arithmetic,
        n_items={
            "heldin": len(groups["heldin"]),
            "heldout": len(groups["heldout"]),
            "arithmetic": len(problems),
        },
        ambiguous_dropped=len(every) - len(clear),
    )
