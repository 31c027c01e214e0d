"""Normalizers: the text clean-up a tokenizer applies before pre-tokenization (Hugging Face `normalizer`).

`Normalizer(config)` makes a `tokenizer.json` normalizer entry callable. Supported types: BertNormalizer,
Lowercase, NFC, NFD, NFKC, NFKD, StripAccents, Strip, Replace, Prepend, Sequence.

BERT's normalizer (Devlin et al. 2019, and the rules of its reference tokenizer), in order:
  1. clean_text: drop NUL, U+FFFD and "control" characters (categories Cc, Cf, Co, except tab / newline /
     carriage return), then turn every whitespace character into a space;
  2. handle_chinese_chars: put spaces around CJK ideographs, so each becomes its own word;
  3. strip_accents (defaults to `lowercase`): NFD, then drop non-spacing marks (category Mn);
  4. lowercase.
Unicode data comes from Python's `unicodedata`; characters whose properties changed in later Unicode
versions than Python's may normalise differently from Rust's tables.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache

from danlu.errors import DanluError
from danlu.tokenizers.components import ComponentSteps
from danlu.tokenizers.safe_regex import compile_file_pattern
from danlu.tokenizers.unicode_regex import WHITE_SPACE_CHARS, compile_pattern, parse_ranges

# The ideograph blocks BERT's reference tokenizer treats as Chinese characters.
BERT_CJK_RANGES = [
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
]


def _esc(cp: int) -> str:
    return f"\\U{cp:08x}"


# Format characters (Cf) added after Unicode 8, which Hugging Face's clean_text keeps (probed).
NEW_CF = "890-891 8E2 110CD 13430-13438"


@cache
def _bert_regexes() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    # Characters clean_text removes: controls, format and private-use characters (Cc, Cf, Co) except
    # tab, newline and carriage return (unassigned ones are kept), plus NUL and U+FFFD.
    cats = [unicodedata.category(chr(i)) in ("Cc", "Cf", "Co") for i in range(0x110000)]
    for c in "\t\n\r":
        cats[ord(c)] = False
    for lo, hi in parse_ranges(NEW_CF):
        cats[lo : hi + 1] = [False] * (hi + 1 - lo)
    cats[0xFFFD] = True
    ranges, start = [], None
    for cp, bad in enumerate(cats):
        if bad and start is None:
            start = cp
        elif not bad and start is not None:
            ranges.append((start, cp - 1))
            start = None
    if start is not None:
        ranges.append((start, 0x10FFFF))
    drop = re.compile("[" + "".join(f"{_esc(a)}-{_esc(b)}" for a, b in ranges) + "]+")
    space = compile_pattern(r"\s")  # Unicode White_Space, as Rust's char::is_whitespace
    cjk = re.compile("([" + "".join(f"{_esc(a)}-{_esc(b)}" for a, b in BERT_CJK_RANGES) + "])")
    return drop, space, cjk


# Non-spacing marks (Mn) added after Unicode 8: Hugging Face's tables do not know them, so its accent
# stripping keeps them (found by probing every Mn code point through `tokenizers`).
NEW_MN = """7FD 898-89F 8CA-8E1 9FE AFA-AFF B55 C04 C3C D00 D3B-D3C D81 EBA 180F 1885-1886 1ABF-1ACE
1DF6-1DFB A82C A8C5 A8FF A9BD 10D24-10D27 10EAB-10EAC 10F46-10F50 10F82-10F85 11070 11073-11074 110C2
111C9 111CF 1123E 1133B 11438-1143F 11442-11444 11446 1145E 1182F-11837 11839-1183A 1193B-1193C 1193E
11943 119D4-119D7 119DA-119DB 119E0 11A01-11A0A 11A33-11A38 11A3B-11A3E 11A47 11A51-11A56 11A59-11A5B
11A8A-11A96 11A98-11A99 11C30-11C36 11C38-11C3D 11C3F 11C92-11CA7 11CAA-11CB0 11CB2-11CB3 11CB5-11CB6
11D31-11D36 11D3A 11D3C-11D3D 11D3F-11D45 11D47 11D90-11D91 11D95 11D97 11EF3-11EF4 16F4F 16FE4
1CF00-1CF2D 1CF30-1CF46 1E000-1E006 1E008-1E018 1E01B-1E021 1E023-1E024 1E026-1E02A 1E130-1E136 1E2AE
1E2EC-1E2EF 1E944-1E94A"""


@cache
def _mn_to_strip() -> frozenset[str]:
    keep = {chr(c) for lo, hi in parse_ranges(NEW_MN) for c in range(lo, hi + 1)}
    return frozenset(chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Mn") - keep


def remove_marks(text: str) -> str:
    """Drop non-spacing marks (Unicode 8 set, as Hugging Face)."""
    marks = _mn_to_strip()
    return "".join(c for c in text if c not in marks)


def strip_accents(text: str) -> str:
    """NFD, then remove non-spacing marks ("é" -> "e")."""
    return remove_marks(unicodedata.normalize("NFD", text))


def bert_normalize(
    text: str,
    clean_text: bool = True,
    handle_chinese_chars: bool = True,
    strip_accents_: bool | None = None,
    lowercase: bool = True,
) -> str:
    """BERT's normalisation (see the module docstring)."""
    drop, space, cjk = _bert_regexes()
    if clean_text:
        text = space.sub(" ", drop.sub("", text))
    if handle_chinese_chars:
        text = cjk.sub(r" \1 ", text)
    if lowercase if strip_accents_ is None else strip_accents_:
        text = strip_accents(text)
    if lowercase:
        text = text.lower()
    return text


def _strip(text: str, left: bool, right: bool) -> str:
    if left:
        text = text.lstrip(WHITE_SPACE_CHARS)
    return text.rstrip(WHITE_SPACE_CHARS) if right else text


class Normalizer(ComponentSteps):
    """A Hugging Face `normalizer` entry made callable: text -> normalised text (None: identity)."""

    parts_key = "normalizers"

    def _add_one(self, kind: str | None, config: dict) -> None:
        if kind == "BertNormalizer":
            options = (
                config.get("clean_text", True),
                config.get("handle_chinese_chars", True),
                config.get("strip_accents"),
                config.get("lowercase", True),
            )
            self._steps.append(lambda t, o=options: bert_normalize(t, *o))
        elif kind == "Lowercase":
            self._steps.append(str.lower)
        elif kind in ("NFC", "NFD", "NFKC", "NFKD"):
            self._steps.append(lambda t, form=kind: unicodedata.normalize(form, t))
        elif kind == "StripAccents":
            # Hugging Face strips every combining mark (M*) here, from its own, older Unicode tables:
            # marks added in recent Unicode versions may be treated differently.
            self._steps.append(lambda t: "".join(c for c in t if unicodedata.category(c)[0] != "M"))
        elif kind == "Strip":
            left, right = config.get("strip_left", True), config.get("strip_right", True)
            self._steps.append(lambda t, lt=left, rt=right: _strip(t, lt, rt))
        elif kind == "Replace":
            pattern, content = config.get("pattern", {}), config.get("content", "")
            if isinstance(pattern, dict) and "Regex" in pattern:  # from a file: under a time limit
                regex = compile_file_pattern(pattern["Regex"], "normalizer Replace")
                self._steps.append(lambda t, r=regex, c=content: r.sub(lambda m: c, t))
            else:
                old = pattern.get("String", "")
                self._steps.append(lambda t, s=old, c=content: t.replace(s, c) if s else t)
        elif kind == "Prepend":
            prefix = config.get("prepend", "")
            self._steps.append(lambda t, p=prefix: p + t if t else t)
        else:
            raise DanluError(f"unsupported normalizer type {kind!r} in tokenizer.json")

    def __call__(self, text: str) -> str:
        for step in self._steps:
            text = step(text)
        return text

    def __bool__(self) -> bool:
        return bool(self._steps)
