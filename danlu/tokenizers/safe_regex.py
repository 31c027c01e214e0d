"""Regexes that come from files (tokenizer.json pre-tokenizer `Split` and normalizer `Replace` patterns), run
with a time limit.

A backtracking engine can take exponential time on a pattern such as `(a|a)+$` (17 s for 27 characters with
Python's `re`), and Python's `re` cannot be interrupted. A tokenizer file is untrusted input, so its patterns
are compiled with the `regex` module, whose matching functions take a `timeout=`; running past it is a
DanluError naming the pattern. The limit is CPU time (how `regex` counts it), and grows with the text (1 s +
10 µs per character: about 8x what the slowest real pattern needs), so long legitimate inputs never hit it.

Patterns danlu itself wrote (its default and GPT-2's) skip the time limit: they are known not to backtrack,
and a cached compiled pattern without the per-call limit is faster.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import regex

from danlu.errors import DanluError
from danlu.tokenizers.unicode_regex import DEFAULT_PATTERN, GPT2_PATTERN, compile_pattern, translate_pattern

FILE_REGEX_TIMEOUT_S = 1.0  # the time limit (CPU seconds) of one call on a short text
FILE_REGEX_TIMEOUT_PER_CHAR_S = 1e-5  # ... plus this much per character of the text
MAX_PATTERN_LENGTH = 100_000  # characters of a pattern as written in the file (real ones: under 300)


def time_limit(text: str) -> float:
    """Seconds one regex call on `text` may take."""
    return FILE_REGEX_TIMEOUT_S + FILE_REGEX_TIMEOUT_PER_CHAR_S * len(text)


class TimedPattern:
    """A compiled `regex` pattern with the subset of `re.Pattern`'s interface the tokenizers use, each call
    under `time_limit(text)`."""

    def __init__(self, pattern: str, source: str) -> None:
        self.source_pattern, self.where = pattern, source
        try:
            self._regex = regex.compile(translate_pattern(pattern), flags=regex.VERSION0)
        except (regex.error, re.error, ValueError, OverflowError, RecursionError) as e:
            raise DanluError(f"cannot compile {source} pattern {pattern!r}: {e}") from e
        self.groups = self._regex.groups
        self.pattern = self._regex.pattern

    def _timed_out(self, text: str) -> DanluError:
        return DanluError(
            f"{self.where} pattern {_short(self.source_pattern)} ran past its time limit "
            f"({time_limit(text):.1f} s) on a {len(text)}-character text: the pattern backtracks "
            "catastrophically; fix or remove it in tokenizer.json"
        )

    def findall(self, text: str) -> list[Any]:
        try:
            return self._regex.findall(text, timeout=time_limit(text))
        except TimeoutError as e:
            raise self._timed_out(text) from e

    def finditer(self, text: str) -> Iterator[Any]:
        try:  # collected first, so the time limit covers the whole scan and not one match
            return iter(list(self._regex.finditer(text, timeout=time_limit(text))))
        except TimeoutError as e:
            raise self._timed_out(text) from e

    def sub(self, repl: str | Callable[[Any], str], text: str) -> str:
        try:
            return self._regex.sub(repl, text, timeout=time_limit(text))
        except TimeoutError as e:
            raise self._timed_out(text) from e


def _short(pattern: str) -> str:
    return repr(pattern if len(pattern) <= 80 else pattern[:77] + "...")


def compile_file_pattern(pattern: Any, source: str) -> re.Pattern[str] | TimedPattern:
    """A Hugging Face (Oniguruma) pattern read from a file: `re` for danlu's own patterns, else a
    `TimedPattern`. `source` names what holds it (e.g. "pre_tokenizer Split")."""
    if not isinstance(pattern, str):
        raise DanluError(f"{source} pattern should be a string, found {type(pattern).__name__} {pattern!r}")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise DanluError(
            f"{source} pattern is {len(pattern)} characters, over the limit of {MAX_PATTERN_LENGTH}"
        )
    if pattern in (DEFAULT_PATTERN, GPT2_PATTERN):
        return compile_pattern(pattern)
    return TimedPattern(pattern, source)
