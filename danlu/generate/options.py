"""Generation options: one dataclass, the same names in `danlu.generate(...)`, `danlu generate`, `danlu chat`
and the server. Each field's help text and range live in its metadata (`danlu.flags.option`): the CLI builds
its flags from them and `validate_options` checks them, so the defaults and ranges are stated once.
Every bad value is a DanluError naming the option, the value and the allowed range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, NoReturn

from danlu.errors import DanluError
from danlu.flags import check_ranges, option


class FrozenMap(dict):
    """A dict that cannot change, so that options holding one (logit_bias) can be hashed and shared."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("generation options cannot change; make new ones with dataclasses.replace(opts, ...)")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _read_only  # type: ignore[assignment]


# length_penalty divides a beam's score by length**alpha (or ((5 + length) / 6)**alpha): beyond |alpha| = 10
# that power overflows a float for long outputs (3**1000 raises OverflowError) and float32 scores underflow to
# ties long before. repetition_penalty divides positive logits and multiplies negative ones: 1e-300 or 1e300
# turn them into inf/-inf and the distribution into NaN; [0.01, 100] covers every value in use (1.0-2.0).
MAX_LENGTH_PENALTY = 10.0
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 100.0
LENGTH_PENALTY_FORMS = ("power", "gnmt")
# A round verifies 1 + num_draft_tokens tokens in one forward; past a few dozen the rejected tail only costs.
MAX_DRAFT_TOKENS = 64
DRAFTS = ("none", "ngram")


@dataclass(frozen=True)
class GenerationOptions:
    """Everything that shapes decoding; the defaults are greedy search with nothing else switched on, as in
    transformers' `generate` (so a beam search or a parity check needs no flag but its own).

    Frozen and hashable: one object travels from the caller (CLI, server request, app, rollout) to the
    decoding loop unchanged; a variant is `dataclasses.replace(opts, seed=...)`. Sequences are stored as
    tuples and logit_bias as a read-only dict (`FrozenMap`)."""

    max_new_tokens: int = option(64, "most tokens to generate", ge=1)
    min_new_tokens: int = option(0, "end-of-text is forbidden before this many new tokens", ge=0)
    temperature: float = option(
        0.0,
        "0 = greedy (argmax); > 0 samples from softmax(logits / temperature)",
        ge=0,
        hint="0 means greedy",
    )
    top_k: int = option(0, "sample from the k most likely tokens; 0 = off", ge=0, hint="0 disables it")
    top_p: float = option(
        1.0,
        "nucleus: the smallest set whose probability reaches p; 1 = off",
        gt=0,
        le=1,
        hint="1 disables it",
    )
    min_p: float = option(
        0.0,
        "keep tokens with p >= min_p x max p (Nguyen et al. 2024); 0 = off",
        ge=0,
        le=1,
        hint="0 disables it",
    )
    repetition_penalty: float = option(
        1.0,
        "CTRL (Keskar et al. 2019): seen tokens' logits / it (x if < 0); 1 = off",
        ge=MIN_REPETITION_PENALTY,
        le=MAX_REPETITION_PENALTY,
        hint="1 disables it",
    )
    presence_penalty: float = option(
        0.0, "OpenAI: minus alpha once for each token already generated", ge=-2, le=2
    )
    frequency_penalty: float = option(
        0.0, "OpenAI: minus alpha x (times the token was generated)", ge=-2, le=2
    )
    no_repeat_ngram_size: int = option(
        0, "forbid any n-gram of this size from appearing twice; 0 = off", ge=0, hint="0 disables it"
    )
    num_beams: int = option(
        1, "beam search with this many beams; 1 = off", ge=1, hint="1 means no beam search"
    )
    # Wu et al. 2016 rank finished hypotheses by score / lp(length)^alpha; > 0 favours longer outputs.
    length_penalty: float = option(
        1.0,
        "beam search: score / length^alpha; > 0 favours longer outputs",
        ge=-MAX_LENGTH_PENALTY,
        le=MAX_LENGTH_PENALTY,
    )
    # "power": lp(n) = n (transformers' generate); "gnmt": lp(n) = (5 + n) / 6 (Wu et al. 2016, eq. 14; the
    # seq2seq translator, as in "Attention Is All You Need" §6.1).
    length_penalty_form: str = option(
        "power", "beam search: length^alpha (power) or ((5 + length) / 6)^alpha (gnmt)",
        choices=LENGTH_PENALTY_FORMS,
    )  # fmt: skip
    early_stopping: bool = option(False, "beam search: end a prompt as soon as num_beams hypotheses finished")
    # Sequences are stored as tuples (hashable); the factories stay `list` so the CLI builds `nargs` flags.
    stop: tuple[str, ...] = option(
        default_factory=list, help="stop strings: the output is cut before the first one", flag="stop"
    )
    seed: int | None = option(None, "sampling seed (each prompt of a batch draws from its own stream)")
    logit_bias: dict[int, float] = option(
        default_factory=dict, help="token id -> added to its logit (OpenAI)", cli=False
    )
    add_eos_stop: bool = option(True, "stop at the tokenizer's end-of-text id", cli=False)
    stop_token_ids: tuple[int, ...] = option(
        default_factory=list, help="more ids that end a row (chat: <|im_end|>)", cli=False
    )
    contrastive_alpha: float = option(
        0.1, "contrastive decoding: keep tokens with p_expert >= alpha x max p_expert (with --amateur-model)",
        gt=0, le=1,
    )  # fmt: skip
    num_draft_tokens: int = option(
        4, "speculative decoding: tokens the draft proposes per round (--draft-model or --draft ngram)",
        ge=1, le=MAX_DRAFT_TOKENS,
    )  # fmt: skip
    # Prompt lookup (Saxena 2023): the draft is the text that followed the latest earlier occurrence of the
    # last 3 (else 2, else 1) tokens; no second model. speculative.py.
    draft: str = option(
        "none", "speculative decoding without a draft model: ngram = prompt lookup (copies earlier text)",
        choices=DRAFTS,
    )  # fmt: skip
    # The schema's canonical JSON text (a dict given here is written out so), enforced by a token mask
    # (grammar.py); '{"type": "object"}' is any JSON object. The CLI's --json-schema FILE reads the text.
    json_schema: str | None = option(
        None, "JSON Schema the output must satisfy (grammar-constrained decoding)", cli=False
    )
    # None: nothing extra is computed. k >= 0: each row also keeps, per token, its log-probability under the
    # model's own next-token distribution (the raw log-softmax, before penalties, bias, grammar and warping, as
    # OpenAI and vLLM report it) and the k most likely tokens there (Completion.raw_logprobs / top_logprobs).
    top_logprobs: int | None = option(
        None, "keep each token's raw log-prob and the k most likely tokens (0..20); None = off",
        ge=0, le=20, cli=False,
    )  # fmt: skip

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: the normal forms are set once, here
        put(self, "stop", (self.stop,) if isinstance(self.stop, str) else tuple(self.stop))
        try:
            put(self, "stop_token_ids", tuple(self.stop_token_ids))
        except TypeError as e:
            raise DanluError(
                f"stop_token_ids must be a list of token ids, got {self.stop_token_ids!r}"
            ) from e
        try:  # JSON object keys are strings: {"50256": -100} means token 50256
            put(self, "logit_bias", FrozenMap({int(k): float(v) for k, v in dict(self.logit_bias).items()}))
        except (TypeError, ValueError) as e:
            raise DanluError(
                f"logit_bias must map token ids to numbers, got {self.logit_bias!r}; e.g. {{50256: -100}}"
            ) from e
        if self.json_schema is not None:
            from danlu.generate.grammar import canonical_schema, compile_schema

            put(self, "json_schema", canonical_schema(self.json_schema))
            compile_schema(self.json_schema)  # a schema llguidance cannot compile fails here, before decoding
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


def validate_options(o: GenerationOptions) -> None:
    """Raise a DanluError naming the first bad option, its value and the allowed range (from field metadata)."""
    check_ranges(o)
    if o.min_new_tokens > o.max_new_tokens:
        raise DanluError(
            f"min_new_tokens must be in [0, max_new_tokens={o.max_new_tokens}], got {o.min_new_tokens!r}"
        )
    lp = o.length_penalty
    if isinstance(lp, bool) or not isinstance(lp, int | float) or not math.isfinite(lp):
        raise DanluError(f"length_penalty must be a finite number, got {lp!r}")
    if o.seed is not None and (isinstance(o.seed, bool) or not isinstance(o.seed, int)):
        raise DanluError(f"seed must be an integer, got {o.seed!r}")
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in o.stop_token_ids):
        raise DanluError(f"stop_token_ids must be token ids (integers >= 0), got {list(o.stop_token_ids)!r}")
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
    if o.top_logprobs is not None and (
        isinstance(o.top_logprobs, bool) or not isinstance(o.top_logprobs, int)
    ):
        raise DanluError(f"top_logprobs must be an integer in [0, 20] or None, got {o.top_logprobs!r}")
    if o.top_logprobs is not None and o.num_beams > 1:
        raise DanluError(
            f"top_logprobs (log-probs of each token) does not work with beam search (num_beams={o.num_beams}); "
            "use num_beams=1"
        )
    if o.num_beams > 1 and o.json_schema is not None:
        raise DanluError(
            f"json_schema does not work with beam search (num_beams={o.num_beams}); use num_beams=1"
        )
