"""Unicode-exact regexes: Hugging Face (Oniguruma) patterns rewritten for Python's `re`.

Hugging Face patterns use `\\p{L}` (any letter) and `\\p{N}` (any number); Python's `re` has no `\\p{...}`.
We do not approximate them with `[^\\W\\d_]`: that class also matches non-decimal numbers such as "²"
and "Ⅷ", which Oniguruma's `\\p{L}` does not, and Oniguruma's `\\w` includes combining marks, Python's
does not. Instead `translate_pattern` rewrites every `\\p{X}` / `\\P{X}` into explicit code-point ranges
computed from `unicodedata` (Unicode 14 on Python 3.11), and `\\s` / `\\w` into the exact sets
Oniguruma uses (checked by experiment: its `\\s` is Unicode White_Space, which excludes U+001C..U+001F
that Python's `\\s` includes). Characters assigned after Python's Unicode version may differ.

Also here: the character classes of BERT's pre-tokenizer (punctuation as Hugging Face defines it).
"""

from __future__ import annotations

import functools
import re
import unicodedata

from danlu.errors import DanluError

# Oniguruma's \s: the Unicode White_Space property.
_WHITE_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A)]
_WHITE_SPACE += [(0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000)]

# The same set as a string, for str.strip (Python's own strip also removes U+001C..U+001F).
WHITE_SPACE_CHARS = "".join(chr(c) for lo, hi in _WHITE_SPACE for c in range(lo, hi + 1))

_CATEGORY_ALIASES = {
    "Letter": "L",
    "Mark": "M",
    "Number": "N",
    "Punctuation": "P",
    "Symbol": "S",
    "Separator": "Z",
    "Other": "C",
}


@functools.cache
def _categories() -> list[str]:
    """General category of every code point (0.1 s once)."""
    return [unicodedata.category(chr(i)) for i in range(0x110000)]


def _ranges(predicate) -> tuple[tuple[int, int], ...]:
    """Maximal code-point ranges whose category satisfies predicate.

    Unassigned code points (Cn) between two matching ones are absorbed into the range: they never occur in
    real text, and fewer ranges make Python's `re` much faster (code points above U+FFFF are tested range
    by range).
    """
    cats = _categories()
    out: list[tuple[int, int]] = []
    start = last = None
    for cp, cat in enumerate(cats):
        if cat == "Cn" and not predicate(cat):
            continue
        if predicate(cat):
            if start is None:
                start = cp
            last = cp
        elif start is not None:
            out.append((start, last))
            start = None
    if start is not None:
        out.append((start, last))
    return tuple(out)


@functools.cache
def category_ranges(name: str) -> tuple[tuple[int, int], ...]:
    """Code-point ranges of a Unicode general category ("L", "Lu", "N", "P", ...)."""
    name = _CATEGORY_ALIASES.get(name, name)
    if name == "Han":
        return ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x323AF))
    if len(name) == 1 and name in "LMNPSZC":
        return _ranges(lambda cat: cat[0] == name)
    if len(name) == 2 and name in set(_categories()):
        return _ranges(lambda cat: cat == name)
    raise DanluError(f"unsupported Unicode property \\p{{{name}}} in a pre-tokenizer pattern")


def _complement(ranges: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    out, nxt = [], 0
    for lo, hi in sorted(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = max(nxt, hi + 1)
    if nxt <= 0x10FFFF:
        out.append((nxt, 0x10FFFF))
    return out


def _class_body(ranges) -> str:
    """Ranges as the inside of a Python character class, with escaped code points."""

    def esc(cp: int) -> str:
        return f"\\U{cp:08x}" if cp > 0xFFFF else f"\\u{cp:04x}"

    return "".join(esc(lo) if lo == hi else f"{esc(lo)}-{esc(hi)}" for lo, hi in ranges)


# Oniguruma's \w beyond letters, marks, Nd, Nl and Pc: the Alphabetic symbols (circled and squared
# Latin letters), and, only outside a character class, the Latin-1 superscripts and vulgar fractions
# (its Latin-1 table differs from its Unicode one). Found by probing every assigned code point
# through `tokenizers`: `\w` matches "²", `[\w]` does not.
_WORD_EXTRA = [(0x24B6, 0x24E9), (0x1F130, 0x1F149), (0x1F150, 0x1F169), (0x1F170, 0x1F189)]
_WORD_LATIN1 = [(0xB2, 0xB3), (0xB9, 0xB9), (0xBC, 0xBE)]


def _word_ranges(in_class: bool) -> tuple[tuple[int, int], ...]:
    """Oniguruma's Unicode \\w (checked code point by code point against `tokenizers`)."""
    parts = category_ranges("L") + category_ranges("M") + category_ranges("Nd") + category_ranges("Nl")
    extra = _WORD_EXTRA if in_class else _WORD_EXTRA + _WORD_LATIN1
    return tuple(sorted(parts + category_ranges("Pc") + tuple(extra)))


def _escape_ranges(letter: str, prop: str | None, in_class: bool) -> tuple[tuple[tuple[int, int], ...], bool]:
    """(ranges, negated) for the escape \\<letter>[{prop}]."""
    if letter in "pP":
        assert prop is not None
        negated = letter == "P"
        if prop.startswith("^"):  # \p{^L} is Oniguruma's spelling of \P{L}
            prop, negated = prop[1:], not negated
        return category_ranges(prop), negated
    if letter in "sS":
        return tuple(_WHITE_SPACE), letter == "S"
    if letter in "wW":
        return _word_ranges(in_class), letter == "W"
    raise AssertionError(letter)


_ESCAPE = re.compile(r"\\(?:([pP])\{(\^?\w+)\}|([pP])([A-Z])|([sSwW])|x\{([0-9a-fA-F]+)\}|(.))", re.S)


@functools.cache
def translate_pattern(pattern: str) -> str:
    """Rewrite an Oniguruma (Hugging Face) regex into an equivalent Python `re` pattern.

    Handles \\p{X}, \\P{X}, \\pX, \\s, \\S, \\w, \\W (outside and inside character classes) and \\x{HHHH};
    every other construct is passed through (Python 3.11 also has possessive quantifiers and atomic
    groups, which LLaMA-3-style patterns use).
    """
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            m = _ESCAPE.match(pattern, i)
            if m is None:
                raise DanluError(f"pre-tokenizer pattern ends with a lone backslash: {pattern!r}")
            i = m.end()
            letter = m.group(1) or m.group(3) or m.group(5)
            if letter:
                prop = m.group(2) or m.group(4)
                ranges, negated = _escape_ranges(letter, prop, in_class)
                if negated:
                    ranges = tuple(_complement(ranges))
                body = _class_body(ranges)
                out.append(body if in_class else f"[{body}]")
            elif m.group(6):
                cp = int(m.group(6), 16)
                out.append(_class_body(((cp, cp),)))
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


@functools.cache
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a Hugging Face (Oniguruma) pre-tokenizer regex for Python's `re`."""
    try:
        return re.compile(translate_pattern(pattern))
    except re.error as e:
        raise DanluError(f"cannot compile pre-tokenizer pattern {pattern!r}: {e}") from e


# Hugging Face's BERT pre-tokenizer and normalizer use Unicode category tables from around Unicode 8.
# Characters that became punctuation (P*) or non-spacing marks (Mn) later are ordinary characters there;
# two that were punctuation then are not P* now. Listed by probing every code point through `tokenizers`.
BERT_NOT_PUNCTUATION = """61D 9FD A76 C77 C84 1B7D-1B7E 2E43-2E4F 2E52-2E5D 10EAD 10F55-10F59 10F86-10F89
1144B-1144F 1145A-1145B 1145D 11660-1166C 116B9 1183B 11944-11946 119E2 11A3F-11A46 11A9A-11A9C
11A9E-11AA2 11C41-11C45 11C70-11C71 11EF7-11EF8 11FFF 12FF1-12FF2 16E97-16E9A 16FE2 1E95E-1E95F"""
BERT_EXTRA_PUNCTUATION = "166D 111C9"


def parse_ranges(text: str) -> list[tuple[int, int]]:
    """ "61D 2E43-2E4F" -> [(0x61D, 0x61D), (0x2E43, 0x2E4F)]."""
    out = []
    for item in text.split():
        lo, _, hi = item.partition("-")
        out.append((int(lo, 16), int(hi or lo, 16)))
    return out


def _subtract(ranges, remove) -> list[tuple[int, int]]:
    out = []
    for lo, hi in ranges:
        for rlo, rhi in sorted(remove):
            if rhi < lo or rlo > hi:
                continue
            if rlo > lo:
                out.append((lo, rlo - 1))
            lo = max(lo, rhi + 1)
            if lo > hi:
                break
        if lo <= hi:
            out.append((lo, hi))
    return out


@functools.cache
def punctuation_class() -> str:
    """BERT's punctuation: ASCII punctuation (which includes symbols like $ + < = > ^ ` |) and Unicode P*."""
    ascii_punct = [(c, c) for c in range(0x21, 0x7F) if not chr(c).isalnum()]
    ranges = set(category_ranges("P")) | set(ascii_punct) | set(parse_ranges(BERT_EXTRA_PUNCTUATION))
    return _class_body(tuple(_subtract(sorted(ranges), parse_ranges(BERT_NOT_PUNCTUATION))))


@functools.cache
def bert_words_regex() -> re.Pattern[str]:
    ws = _class_body(tuple(_WHITE_SPACE))
    punct = punctuation_class()
    return re.compile(f"[^{ws}{punct}]+|[{punct}]")
