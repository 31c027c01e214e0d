"""Normalizers: the text clean-up a tokenizer applies before pre-tokenization (Hugging Face `normalizer`).

`Normalizer(config)` makes a `tokenizer.json` normalizer entry callable. Supported types: BertNormalizer,
Lowercase, NFC, NFD, NFKC, NFKD, StripAccents, Strip, Replace, Prepend, Sequence.

BERT's normalizer (Devlin et al. 2019, and the rules of its reference tokenizer), in order:
  1. clean_text: drop NUL, U+FFFD and "control" characters (Unicode category C*, except tab / newline /
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
from danlu.tokenizers.pretokenize import compile_pattern

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


@cache
def _bert_regexes() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    # Characters clean_text removes: C* except \t \n \r, plus NUL and U+FFFD.
    cats = [unicodedata.category(chr(i))[0] == "C" for i in range(0x110000)]
    for c in "\t\n\r":
        cats[ord(c)] = False
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


def strip_accents(text: str) -> str:
    """NFD, then remove non-spacing marks ("é" -> "e")."""
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


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
        text = text.lstrip()
    return text.rstrip() if right else text


class Normalizer:
    """A Hugging Face `normalizer` entry made callable: text -> normalised text (None: identity)."""

    def __init__(self, config: dict | None) -> None:
        self.config = config
        self._steps: list = []
        self._add(config)

    def _add(self, config: dict | None) -> None:
        if config is None:
            return
        kind = config.get("type")
        if kind == "Sequence":
            for sub in config.get("normalizers", []):
                self._add(sub)
        elif kind == "BertNormalizer":
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
            self._steps.append(lambda t: "".join(c for c in t if unicodedata.category(c) != "Mn"))
        elif kind == "Strip":
            left, right = config.get("strip_left", True), config.get("strip_right", True)
            self._steps.append(lambda t, lt=left, rt=right: _strip(t, lt, rt))
        elif kind == "Replace":
            pattern, content = config.get("pattern", {}), config.get("content", "")
            if "Regex" in pattern:
                regex = compile_pattern(pattern["Regex"])
                self._steps.append(lambda t, r=regex, c=content: r.sub(lambda m: c, t))
            else:
                self._steps.append(
                    lambda t, s=pattern.get("String", ""), c=content: t.replace(s, c) if s else t
                )
        elif kind == "Prepend":
            self._steps.append(lambda t, p=config.get("prepend", ""): p + t if t else t)
        else:
            raise DanluError(f"unsupported normalizer type {kind!r} in tokenizer.json")

    def __call__(self, text: str) -> str:
        for step in self._steps:
            text = step(text)
        return text

    def __bool__(self) -> bool:
        return bool(self._steps)
