"""Hugging Face (Oniguruma) pre-tokenizer patterns run by the `regex` module.

Hugging Face patterns use `\\p{L}` (any letter), `\\p{N}` (any number), `\\p{Han}` and friends; Python's `re`
has none of them, the `regex` module has them all, from its own Unicode database (newer than Python's
`unicodedata`). Checked against `tokenizers` code point by code point, `regex`'s `\\s`, `\\p{L}`, `\\p{N}`,
`\\p{P}`, `\\p{S}`, `\\p{M}` and `\\p{Han}` are Oniguruma's exactly, apart from characters assigned after the
Unicode version of `tokenizers`' tables (and U+0295, Ll there, Lo in Unicode 16). Two differences are
rewritten by `translate_pattern`:
- Oniguruma's `\\w` lacks the Join_Control characters U+200C/U+200D that `regex`'s has, and outside a
  character class also matches the Latin-1 superscripts and vulgar fractions (² ³ ¹ ¼ ½ ¾: its Latin-1
  table differs from its Unicode one), so `\\w` / `\\W` are written out as those sets;
- Oniguruma writes a code point `\\x{HHHH}`, which `regex` reads as `\\uHHHH` / `\\UHHHHHHHH`.
Everything else (possessive quantifiers, atomic groups, `\\p{^L}`) `regex` reads as Oniguruma does.

Also here: the character classes of BERT's pre-tokenizer (punctuation as Hugging Face defines it).
"""

from __future__ import annotations

import functools
import re

import regex

from danlu.errors import DanluError

# Oniguruma's \w is Unicode's (UTS #18: Alphabetic, marks, decimal digits, connector punctuation) without the
# Join_Control characters U+200C/U+200D that regex's \w adds; outside a class also the Latin-1 superscripts
# and vulgar fractions. Found by probing every code point through `tokenizers`.
_WORD = r"\p{Alphabetic}\p{M}\p{Nd}\p{Pc}"
_WORD_LATIN1 = "\u00b2\u00b3\u00b9\u00bc-\u00be"
_WORD_OUTSIDE = _WORD + _WORD_LATIN1
_JOIN_CONTROL = "\u200c\u200d"

_ESCAPE = re.compile(r"\\(?:([wW])|x\{([0-9a-fA-F]+)\}|(.))", re.S)


# The Han script (Unicode's Script property, which Oniguruma and the `regex` module both know).
HAN = r"\p{Han}"

# The default danlu pattern, in Hugging Face (Oniguruma) syntax. GPT-2's pattern with two changes:
#  - a run of Han characters is its own word, apart from other letters, so "GPT模型" -> "GPT", "模型"
#    (GPT-2's ` ?\p{L}+` would glue them, and a whole Chinese clause would be one word either way);
#  - every digit is its own word (as LLaMA and Qwen do), so "1234" is 4 tokens and arithmetic sees
#    place values consistently (Nogueira et al. 2021, "Investigating the limitations of transformers
#    with simple arithmetic tasks").
DEFAULT_PATTERN = (
    r"'(?:s|t|re|ve|m|ll|d)"
    r"| ?[^\P{L}" + HAN + r"]+"
    r"| ?[" + HAN + r"]+"
    r"|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+"
    r"|\s+(?!\S)"
    r"|\s+"
)

# GPT-2's own pattern (what ByteLevel(use_regex=true) uses in Hugging Face tokenizers).
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def _code_point(cp: int) -> str:
    return f"\\U{cp:08x}" if cp > 0xFFFF else f"\\u{cp:04x}"


@functools.cache
def translate_pattern(pattern: str) -> str:
    """Rewrite an Oniguruma (Hugging Face) regex into the equivalent `regex` pattern (see the module
    docstring: `\\w` / `\\W` outside a class, and `\\x{HHHH}`); every other construct is passed through."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            m = _ESCAPE.match(pattern, i)
            if m is None:
                raise DanluError(f"pre-tokenizer pattern ends with a lone backslash: {pattern!r}")
            i = m.end()
            if m.group(1) and not in_class:
                out.append(f"[{_WORD_OUTSIDE}]" if m.group(1) == "w" else f"[^{_WORD_OUTSIDE}]")
            elif m.group(1):  # inside a class: without (\w) or with (\W) the Join_Control characters
                out.append(_WORD if m.group(1) == "w" else f"\\W{_JOIN_CONTROL}")
            elif m.group(2):
                out.append(_code_point(int(m.group(2), 16)))
            else:
                out.append(m.group(0))
            continue
        if in_class:
            if ch == "]":
                in_class = False
        elif ch == "[":
            in_class = True
            out.append(ch)
            i += 1
            # A "]" or "^]" right after "[" is a literal, not the end of the class.
            if pattern.startswith("^", i):
                out.append("^")
                i += 1
            if pattern.startswith("]", i):
                out.append("\\]")
                i += 1
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def compile_regex(pattern: str) -> regex.Pattern[str]:
    """`regex.compile` of an Oniguruma pattern (VERSION0: `re`'s semantics where the two differ), with a
    DanluError naming the pattern for a bad one or an unknown `\\p{...}` property."""
    try:
        return regex.compile(translate_pattern(pattern), flags=regex.VERSION0)
    except regex.error as e:
        if "unknown property" in str(e):
            raise DanluError(f"unsupported Unicode property in pre-tokenizer pattern {pattern!r}: {e}") from e
        raise DanluError(f"cannot compile pre-tokenizer pattern {pattern!r}: {e}") from e
    except (re.error, ValueError, OverflowError, RecursionError) as e:
        raise DanluError(f"cannot compile pre-tokenizer pattern {pattern!r}: {e}") from e


@functools.cache
def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """Compile a Hugging Face (Oniguruma) pre-tokenizer regex (cached: for danlu's own, trusted patterns)."""
    return compile_regex(pattern)


# Oniguruma's \s is Unicode White_Space, as regex's is (Python's `re` and str.strip add U+001C..U+001F).
WHITE_SPACE_CHARS = "".join(chr(c) for c in range(0x3001) if regex.match(r"\s", chr(c)))

# Hugging Face's BERT pre-tokenizer and normalizer use Unicode category tables from around Unicode 8.
# Characters that became punctuation (P*) later are ordinary characters there; two that were punctuation
# then are not P* now. Listed by probing every code point through `tokenizers` against regex's \p{P}.
BERT_NOT_PUNCTUATION = """61D 9FD A76 C77 C84 1B4E-1B4F 1B7D-1B7F 2E43-2E4F 2E52-2E5D 10D6E 10EAD 10ED0
10F55-10F59 10F86-10F89 113D4-113D5 113D7-113D8 1144B-1144F 1145A-1145B 1145D 11660-1166C 116B9 1183B
11944-11946 119E2 11A3F-11A46 11A9A-11A9C 11A9E-11AA2 11B00-11B09 11BE1 11C41-11C45 11C70-11C71
11EF7-11EF8 11F43-11F4F 11FFF 12FF1-12FF2 16D6D-16D6F 16E97-16E9A 16FE2 1E5FF 1E95E-1E95F"""
BERT_EXTRA_PUNCTUATION = "166D 111C9"


def parse_ranges(text: str) -> list[tuple[int, int]]:
    """ "61D 2E43-2E4F" -> [(0x61D, 0x61D), (0x2E43, 0x2E4F)]."""
    out = []
    for item in text.split():
        lo, _, hi = item.partition("-")
        out.append((int(lo, 16), int(hi or lo, 16)))
    return out


def _class_body(ranges: list[tuple[int, int]]) -> str:
    return "".join(
        _code_point(lo) if lo == hi else f"{_code_point(lo)}-{_code_point(hi)}" for lo, hi in ranges
    )


@functools.cache
def punctuation_class() -> str:
    """BERT's punctuation, as the inside of a `regex` VERSION1 class: ASCII punctuation (which includes
    symbols like $ + < = > ^ ` |) and Unicode P*, less what Hugging Face's older tables do not call
    punctuation."""
    ascii_punct = "".join(re.escape(chr(c)) for c in range(0x21, 0x7F) if not chr(c).isalnum())
    extra = _class_body(parse_ranges(BERT_EXTRA_PUNCTUATION))
    return f"[\\p{{P}}{ascii_punct}{extra}]--[{_class_body(parse_ranges(BERT_NOT_PUNCTUATION))}]"


@functools.cache
def punctuation_regex() -> regex.Pattern[str]:
    return regex.compile(f"[{punctuation_class()}]", flags=regex.VERSION1)


@functools.cache
def bert_words_regex() -> regex.Pattern[str]:
    """BERT's words: runs of anything but white space and punctuation, or one punctuation mark."""
    punct = punctuation_class()  # a set expression: [punct] is the class, nested as a set inside another
    return regex.compile(f"[^\\s[{punct}]]+|[{punct}]", flags=regex.VERSION1)
