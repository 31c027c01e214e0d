"""BLEU (Papineni et al., 2002) with sacrebleu's tokenizers and smoothing; re-exported by `danlu.eval.text`.

BLEU = BP · exp( (1/N) Σ_{n=1..N} log p_n ), N = 4, where p_n is the clipped n-gram precision
(each hypothesis n-gram counts at most as often as it occurs in the reference that has it most often) and
BP = min(1, exp(1 - r / c)) the brevity penalty, c the hypothesis length and r the length of the closest
reference (the shorter one on ties). Corpus BLEU sums the counts over all sentences before dividing.
Scores are on sacrebleu's 0-100 scale. Tests check parity with sacrebleu 2.x to 1e-6.

Smoothing (Chen & Cherry, 2014, "A Systematic Comparison of Smoothing Techniques for Sentence-Level BLEU"):
- "none": a zero p_n makes the score 0;
- "floor" (method 1): a zero count is replaced by `smooth_value` (default 0.1);
- "add-k" (method 2): k (default 1) is added to the counts and totals of orders n >= 2;
- "exp" (method 3, mteval-v13a's): the i-th zero precision becomes 1 / (2^i · total_n). The default.
`effective_order=True` (the default for sentence BLEU) averages only over the orders the hypothesis has
n-grams for, so a 3-word sentence is not scored 0 for lacking 4-grams.

Tokenizers, written from the rules of mteval-v13a.pl as sacrebleu documents them:
- "13a": unescape &quot; &amp; &lt; &gt;, drop "<skipped>" and line-break hyphens, then split off
  punctuation and symbols; "." and "," are split off unless between digits, "-" only after a digit.
- "zh": every Chinese character (and CJK/full-width symbol) becomes its own token, then the same rules.
- "none": split on whitespace only.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from danlu.errors import DanluError

MAX_NGRAM_ORDER = 4
SMOOTH_DEFAULTS: dict[str, float | None] = {"none": None, "floor": 0.1, "add-k": 1.0, "exp": None}

# mteval-v13a: these ASCII punctuation/symbol characters always become separate tokens (the apostrophe,
# "-", "." and "," are handled by the rules below or kept inside words).
_ALWAYS_SPLIT = re.compile(r"([{|}~\[\\\]^_`!\"#$%&()*+:;<=>?@/ ])")
_MTEVAL_RULES = [
    (_ALWAYS_SPLIT, r" \1 "),
    (re.compile(r"([^0-9])([.,])"), r"\1 \2 "),  # "." / "," not after a digit: split
    (re.compile(r"([.,])([^0-9])"), r" \1 \2"),  # "." / "," not before a digit: split (3.5 and 1,000 stay)
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # "-" after a digit: split (2-3 -> 2 - 3)
]

# Code points that the "zh" tokenizer isolates: CJK ideographs, radicals, strokes, CJK and full-width
# punctuation, enclosed CJK, and a few symbol blocks. sacrebleu writes two of these ranges as
# '\u20000'-'\u2a6d6' and '\u2f800'-'\u2fa1d'; Python reads '\u20000' as U+2000 followed by "0", so what is
# really compared is U+2001..U+2A6D (general punctuation, arrows, maths...) and U+2F81..U+2FA1. We keep
# the ranges as they behave, not as they were meant, because BLEU scores must match sacrebleu's.
_ZH_RANGES = [
    (0x3400, 0x4DB5), (0x4E00, 0x9FA5), (0x9FA6, 0x9FBB), (0xF900, 0xFA2D), (0xFA30, 0xFA6A),
    (0xFA70, 0xFAD9), (0x2001, 0x2A6D), (0x2F81, 0x2FA1), (0xFF00, 0xFFEF), (0x2E80, 0x2EFF),
    (0x3000, 0x303F), (0x31C0, 0x31EF), (0x2F00, 0x2FDF), (0x2FF0, 0x2FFF), (0x3100, 0x312F),
    (0x31A0, 0x31BF), (0xFE10, 0xFE1F), (0xFE30, 0xFE4F), (0x2600, 0x26FF), (0x2700, 0x27BF),
    (0x3200, 0x32FF), (0x3300, 0x33FF),
]  # fmt: skip
_ZH_CHAR = re.compile(
    "([" + "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in _ZH_RANGES) + "])"
)


def _mteval_split(line: str) -> str:
    for pattern, replacement in _MTEVAL_RULES:
        line = pattern.sub(replacement, line)
    return " ".join(line.split())


@lru_cache(maxsize=2**16)
def tokenize_13a(line: str) -> str:
    """mteval-v13a tokenization (the WMT standard): tokens joined by single spaces."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    return _mteval_split(f" {line} ")  # the padding lets the "." / "," rules see a neighbour at the ends


@lru_cache(maxsize=2**16)
def tokenize_zh(line: str) -> str:
    """Chinese: each Chinese character is a token; the rest is split by the 13a rules."""
    return _mteval_split(_ZH_CHAR.sub(r" \1 ", line.strip()))


TOKENIZERS = {"13a": tokenize_13a, "zh": tokenize_zh, "none": lambda line: line}


def bleu_tokenize(text: str, tokenize: str = "13a", lowercase: bool = False) -> list[str]:
    """The tokens BLEU counts for `text` (lowercased first if asked, trailing whitespace dropped)."""
    if tokenize not in TOKENIZERS:
        raise DanluError(f"tokenize: {tokenize!r} is not one of {sorted(TOKENIZERS)}")
    if not isinstance(text, str):
        raise DanluError(f"text: expected a string, got {type(text).__name__} {text!r}")
    if lowercase:
        text = text.lower()
    return TOKENIZERS[tokenize](text.rstrip()).split()


@dataclass(frozen=True)
class BleuScore:
    """score in [0, 100]; counts/totals: matched and total n-grams per order; precisions in percent."""

    score: float
    counts: list[float]
    totals: list[float]
    precisions: list[float]
    bp: float
    sys_len: int
    ref_len: int


def _ngrams(tokens: list[str], max_order: int) -> Counter:
    return Counter(
        tuple(tokens[i : i + n]) for n in range(1, max_order + 1) for i in range(len(tokens) - n + 1)
    )


def _sentence_stats(hyp: list[str], refs: list[list[str]], max_order: int) -> list[int]:
    """[hyp_len, closest_ref_len, matched_1..N, total_1..N] for one sentence."""
    ref_counts: Counter = Counter()
    for ref in refs:
        ref_counts |= _ngrams(ref, max_order)  # Counter union = elementwise max: the clipping counts
    # closest reference length, the shorter one when two are equally close (mteval, sacrebleu)
    ref_len = min((len(r) for r in refs), key=lambda n: (abs(len(hyp) - n), n))
    matched, total = [0] * max_order, [0] * max_order
    for gram, count in _ngrams(hyp, max_order).items():
        total[len(gram) - 1] += count
        matched[len(gram) - 1] += min(count, ref_counts[gram])
    return [len(hyp), ref_len, *matched, *total]


def _score_from_stats(
    stats: Sequence[float],
    smooth_method: str,
    smooth_value: float | None,
    effective_order: bool,
    max_order: int,
) -> BleuScore:
    sys_len, ref_len = int(stats[0]), int(stats[1])
    correct, total = list(stats[2 : 2 + max_order]), list(stats[2 + max_order :])
    if smooth_value is None:
        smooth_value = SMOOTH_DEFAULTS[smooth_method]
    bp = 1.0 if sys_len >= ref_len else (math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0)
    precisions = [0.0] * max_order
    if not any(correct):  # nothing matches at any order: 0 whatever the smoothing (sacrebleu >= 2.4)
        return BleuScore(0.0, correct, total, precisions, bp, sys_len, ref_len)
    exp_factor, used_orders = 1.0, max_order
    for n in range(1, max_order + 1):
        if smooth_method == "add-k" and n > 1:
            correct[n - 1] += smooth_value
            total[n - 1] += smooth_value
        if total[n - 1] == 0:
            break  # the hypothesis is shorter than n: no n-grams at this or higher orders
        if effective_order:
            used_orders = n
        if correct[n - 1] == 0:
            if smooth_method == "exp":
                exp_factor *= 2
                precisions[n - 1] = 100.0 / (exp_factor * total[n - 1])
            elif smooth_method == "floor":
                precisions[n - 1] = 100.0 * smooth_value / total[n - 1]
        else:
            precisions[n - 1] = 100.0 * correct[n - 1] / total[n - 1]
    # log 0 is floored to a huge negative number (as mteval does), which makes the score 0.0
    log_sum = sum(math.log(p) if p > 0 else -9999999999.0 for p in precisions[:used_orders])
    return BleuScore(bp * math.exp(log_sum / used_orders), correct, total, precisions, bp, sys_len, ref_len)


def _reference_list(name: str, refs: str | Sequence[str]) -> list[str]:
    refs = [refs] if isinstance(refs, str) else list(refs)
    if not refs:
        raise DanluError(f"{name}: has no reference; give at least one reference string")
    for r in refs:
        if not isinstance(r, str):
            raise DanluError(f"{name}: references must be strings, got {type(r).__name__} {r!r}")
    return refs


def _check_options(smooth_method: str, tokenize: str, max_ngram_order: int) -> None:
    if smooth_method not in SMOOTH_DEFAULTS:
        raise DanluError(f"smooth_method: {smooth_method!r} is not one of {list(SMOOTH_DEFAULTS)}")
    if tokenize not in TOKENIZERS:
        raise DanluError(f"tokenize: {tokenize!r} is not one of {sorted(TOKENIZERS)}")
    if max_ngram_order < 1:
        raise DanluError(f"max_ngram_order: {max_ngram_order} must be >= 1")


def corpus_bleu(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    tokenize: str = "13a",
    smooth_method: str = "exp",
    smooth_value: float | None = None,
    lowercase: bool = False,
    effective_order: bool = False,
    max_ngram_order: int = MAX_NGRAM_ORDER,
) -> BleuScore:
    """Corpus BLEU: n-gram counts and lengths summed over all sentences, then one score (0-100).

    `references[i]` is the reference string of `predictions[i]`, or a list of them. (sacrebleu takes the
    transpose: one list per reference "stream"; the numbers are the same.)
    """
    _check_options(smooth_method, tokenize, max_ngram_order)
    if isinstance(predictions, str) or isinstance(references, str):
        raise DanluError(
            "predictions / references: pass lists of strings (for one sentence use sentence_bleu)"
        )
    if len(predictions) == 0:
        raise DanluError("predictions: is empty; pass at least one sentence")
    if len(predictions) != len(references):
        raise DanluError(
            f"length mismatch: predictions has {len(predictions)}, references has {len(references)}; "
            f"pass one reference (or list of references) per prediction"
        )
    totals = [0] * (2 + 2 * max_ngram_order)
    for i, (hyp, refs) in enumerate(zip(predictions, references, strict=True)):
        refs = _reference_list(f"references[{i}]", refs)
        if not isinstance(hyp, str):
            raise DanluError(f"predictions[{i}]: expected a string, got {type(hyp).__name__} {hyp!r}")
        stats = _sentence_stats(
            bleu_tokenize(hyp, tokenize, lowercase),
            [bleu_tokenize(r, tokenize, lowercase) for r in refs],
            max_ngram_order,
        )
        totals = [a + b for a, b in zip(totals, stats, strict=True)]
    return _score_from_stats(totals, smooth_method, smooth_value, effective_order, max_ngram_order)


def sentence_bleu(
    prediction: str,
    references: str | Sequence[str],
    tokenize: str = "13a",
    smooth_method: str = "exp",
    smooth_value: float | None = None,
    lowercase: bool = False,
    effective_order: bool = True,
    max_ngram_order: int = MAX_NGRAM_ORDER,
) -> BleuScore:
    """BLEU of one sentence against one or more references (effective order on by default, as sacrebleu)."""
    if not isinstance(prediction, str):
        raise DanluError(f"prediction: expected a string, got {type(prediction).__name__} {prediction!r}")
    return corpus_bleu(
        [prediction],
        [_reference_list("references", references)],
        tokenize=tokenize,
        smooth_method=smooth_method,
        smooth_value=smooth_value,
        lowercase=lowercase,
        effective_order=effective_order,
        max_ngram_order=max_ngram_order,
    )
