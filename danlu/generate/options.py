"""Generation options: one dataclass, the same names in `danlu.generate(...)`, `danlu generate`, `danlu chat`
and the server. Every bad value is a DanluError naming the option, the value and the allowed range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from danlu.errors import DanluError


@dataclass
class GenerationOptions:
    """Everything that shapes decoding; the defaults are greedy search with nothing else switched on."""

    max_new_tokens: int = 64
    min_new_tokens: int = 0  # end-of-text is forbidden before this many new tokens
    temperature: float = 0.0  # 0 = greedy (argmax); > 0 samples from softmax(logits / temperature)
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    top_p: float = 1.0  # nucleus: the smallest set whose probability reaches p; 1 = off
    min_p: float = 0.0  # keep tokens with p >= min_p · max p (Nguyen et al. 2024); 0 = off
    repetition_penalty: float = 1.0  # CTRL (Keskar et al. 2019): seen tokens' logits ÷ (or ×, if < 0) it
    presence_penalty: float = 0.0  # OpenAI: minus alpha once for each token already generated
    frequency_penalty: float = 0.0  # OpenAI: minus alpha × (times the token was generated)
    no_repeat_ngram_size: int = 0  # forbid any n-gram from appearing twice; 0 = off
    num_beams: int = 1  # > 1: beam search
    length_penalty: float = (
        1.0  # beam search ranks finished hypotheses by score / length^alpha (Wu et al. 2016)
    )
    early_stopping: bool = False  # beam search: end a prompt as soon as num_beams hypotheses are finished
    stop: list[str] = field(default_factory=list)  # stop strings: the output is cut before the first one
    seed: int | None = None  # sampling seed (each prompt of a batch draws from its own stream)
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit (OpenAI)
    add_eos_stop: bool = True  # stop at the tokenizer's end-of-text id
    stop_token_ids: list[int] = field(default_factory=list)  # more ids that end a row (chat: <|im_end|>)
    contrastive_alpha: float = 0.1  # contrastive decoding: keep tokens with p_expert >= alpha · max p_expert
    num_draft_tokens: int = 4  # speculative decoding: tokens the draft model proposes per round (gamma)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        try:  # JSON object keys are strings: {"50256": -100} means token 50256
            self.logit_bias = {int(k): float(v) for k, v in dict(self.logit_bias).items()}
        except (TypeError, ValueError) as e:
            raise DanluError(
                f"logit_bias must map token ids to numbers, got {self.logit_bias!r}; e.g. {{50256: -100}}"
            ) from e
        validate_options(self)

    @classmethod
    def from_kwargs(cls, **options: Any) -> GenerationOptions:
        """Like the constructor, but an unknown name is a DanluError listing the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise DanluError(f"unknown generation option(s) {unknown}; known options: {sorted(known)}")
        return cls(**options)

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0


def _number(name: str, value: Any, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or (not integer and not math.isfinite(value)):
        kind = "an integer" if integer else "a finite number"
        raise DanluError(f"{name} must be {kind}, got {value!r}")
    return value


def validate_options(o: GenerationOptions) -> None:
    """Raise a DanluError naming the first bad option, its value and the allowed range."""
    checks: list[tuple[str, bool, str, str]] = [
        ("max_new_tokens", _number("max_new_tokens", o.max_new_tokens, True) >= 1, ">= 1", ""),
        ("min_new_tokens", 0 <= _number("min_new_tokens", o.min_new_tokens, True) <= o.max_new_tokens,
         f"in [0, max_new_tokens={o.max_new_tokens}]", ""),
        ("temperature", _number("temperature", o.temperature) >= 0, ">= 0", "0 means greedy"),
        ("top_k", _number("top_k", o.top_k, True) >= 0, ">= 0", "0 disables it"),
        ("top_p", 0 < _number("top_p", o.top_p) <= 1, "in (0, 1]", "1 disables it"),
        ("min_p", 0 <= _number("min_p", o.min_p) <= 1, "in [0, 1]", "0 disables it"),
        ("repetition_penalty", _number("repetition_penalty", o.repetition_penalty) > 0, "> 0",
         "1 disables it"),
        ("presence_penalty", -2 <= _number("presence_penalty", o.presence_penalty) <= 2, "in [-2, 2]", ""),
        ("frequency_penalty", -2 <= _number("frequency_penalty", o.frequency_penalty) <= 2, "in [-2, 2]", ""),
        ("no_repeat_ngram_size", _number("no_repeat_ngram_size", o.no_repeat_ngram_size, True) >= 0, ">= 0",
         "0 disables it"),
        ("num_beams", _number("num_beams", o.num_beams, True) >= 1, ">= 1", "1 means no beam search"),
        ("length_penalty", _number("length_penalty", o.length_penalty) == o.length_penalty, "finite", ""),
        ("contrastive_alpha", 0 < _number("contrastive_alpha", o.contrastive_alpha) <= 1, "in (0, 1]", ""),
        ("num_draft_tokens", _number("num_draft_tokens", o.num_draft_tokens, True) >= 1, ">= 1", ""),
    ]  # fmt: skip
    for name, ok, allowed, hint in checks:
        if not ok:
            raise DanluError(
                f"{name} must be {allowed}, got {getattr(o, name)!r}" + (f" ({hint})" if hint else "")
            )
    if o.seed is not None:
        _number("seed", o.seed, True)
    if not all(isinstance(s, str) and s for s in o.stop):
        raise DanluError(f"stop must be a list of non-empty strings, got {o.stop!r}")
    for tok, bias in o.logit_bias.items():
        if not (tok >= 0 and -100 <= bias <= 100):
            raise DanluError(f"logit_bias maps token ids (>= 0) to values in [-100, 100], got {tok}: {bias}")
    if o.num_beams > 1 and o.do_sample:
        raise DanluError(
            f"num_beams={o.num_beams} with temperature={o.temperature}: beam search is deterministic here; "
            "use temperature=0 with beams, or num_beams=1 to sample"
        )
