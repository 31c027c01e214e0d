"""Diversity and repetition of generated text: distinct-n and the within-sample repetition rate.

- distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation Models",
  §4.3): the number of distinct n-grams across all samples divided by the total number of n-grams (Li et al.
  divide by the generated words, the same for n = 1; per n-gram is the common form, bounded by 1). 1.0 means
  no n-gram ever recurs; a model that says the same thing to every prompt scores near 0.
- repetition rate (Welleck et al. 2020, "Neural Text Generation with Unlikelihood Training", §6, seq-rep-n):
  within ONE sample, the share of its n-grams that are repeats, 1 − |unique n-grams| / |n-grams|, averaged
  over the samples. It measures the degenerate loops greedy decoding falls into ("the the the", a sentence said
  twice) that distinct-n, pooled over samples, mixes up with samples resembling each other.

Both take token sequences (any hashable items: words, token ids); `words(text)` is the plain word split used by
the decoding experiment: runs of ASCII letters and digits, and every other non-space character on its own (a
Chinese character is a word, as the world's `split_words` counts it; so is a punctuation mark).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence

from danlu.errors import DanluError

__all__ = ["ngrams", "distinct_n", "repetition_rate", "sample_repetition", "words"]

_WORD = re.compile(r"[A-Za-z0-9]+|\S")


def words(text: str) -> list[str]:
    """Words, characters and marks of text: 'Yuli eats eggs. 尤利' -> ['Yuli', 'eats', 'eggs', '.', '尤', '利']."""
    return _WORD.findall(text)


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DanluError(f"n-gram size must be an integer >= 1, got {n!r}")


def ngrams(tokens: Sequence[Hashable], n: int) -> list[tuple]:
    """The n-grams of one sequence, in order (len(tokens) − n + 1 of them, none if it is shorter than n)."""
    _check_n(n)
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples: Sequence[Sequence[Hashable]], n: int) -> float:
    """Distinct n-grams over all samples / total n-grams (Li et al. 2016); 0.0 when there is no n-gram."""
    _check_n(n)
    seen: set[tuple] = set()
    total = 0
    for s in samples:
        grams = ngrams(s, n)
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0


def sample_repetition(tokens: Sequence[Hashable], n: int) -> float | None:
    """1 − |unique n-grams| / |n-grams| of one sequence (Welleck et al. 2020's seq-rep-n); None if it has no
    n-gram (too short to say)."""
    grams = ngrams(tokens, n)
    if not grams:
        return None
    return 1.0 - len(set(grams)) / len(grams)


def repetition_rate(samples: Sequence[Sequence[Hashable]], n: int = 4) -> float:
    """The mean of `sample_repetition` over the samples long enough to have an n-gram (0.0 if none is)."""
    rates = [r for r in (sample_repetition(s, n) for s in samples) if r is not None]
    return sum(rates) / len(rates) if rates else 0.0
