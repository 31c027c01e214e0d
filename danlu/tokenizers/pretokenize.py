"""Pre-tokenization: split text into "words" before the subword model sees it, and the GPT-2 byte alphabet.

Byte-level BPE (Radford et al. 2019, GPT-2) never sees characters: every word is turned into its UTF-8
bytes, and each byte is shown as one printable Unicode character (`bytes_to_unicode`) so that vocabularies
and merges can be stored as JSON strings. That mapping is the one Hugging Face `tokenizers` uses, so our
`tokenizer.json` files are readable by it.

Regex dialects. Hugging Face patterns are Oniguruma regexes that use `\\p{L}` (any letter) and `\\p{N}`
(any number); Python's `re` has no `\\p{...}`. We do not approximate them with `[^\\W\\d_]`: that
class also matches non-decimal numbers such as "²" and "Ⅷ", which Oniguruma's `\\p{L}` does not, and
Oniguruma's `\\w` includes combining marks, Python's does not. Instead `translate_pattern` rewrites every
`\\p{X}` / `\\P{X}` into explicit code-point ranges computed from `unicodedata` (Unicode 14 on Python
3.11, the version of the Oniguruma inside `tokenizers`), and `\\s` / `\\w` into the exact sets Oniguruma
uses (checked by experiment: Oniguruma's `\\s` is Unicode White_Space, which excludes U+001C..U+001F
that Python's `\\s` includes). The pattern stored in `tokenizer.json` keeps the readable `\\p{...}` form.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from danlu.errors import DanluError


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (all 256 bytes).

    Printable Latin-1 bytes map to themselves; the other 68 (control chars, space, ...) map to
    U+0100 onwards in byte order, so no token string contains whitespace or control characters.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    mapping = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + n)
            n += 1
    return mapping


BYTE_TO_CHAR: dict[int, str] = bytes_to_unicode()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in BYTE_TO_CHAR.items()}


def token_to_bytes(token: str) -> bytes | None:
    """The bytes of a byte-level token string ("Ġhi" -> b" hi"), or None if it is not byte-level."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in token)
    except KeyError:
        return None


def bytes_to_token(data: bytes) -> str:
    """The byte-level string for raw bytes (b" hi" -> "Ġhi")."""
    return "".join(BYTE_TO_CHAR[b] for b in data)


# CJK ideograph blocks (Extension A, Unified, Compatibility, Extensions B..H). Python's unicodedata has
# no Script property, so "Han" is these blocks. Written as literal characters, which both Python's `re`
# and Oniguruma read the same way inside a class.
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U000323af"

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

# Oniguruma's \s: the Unicode White_Space property.
_WHITE_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A)]
_WHITE_SPACE += [(0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000)]

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


def split_isolated(regex: re.Pattern[str], text: str) -> list[str]:
    """Split text into the regex's matches and the gaps between them, in order (HF "Isolated").

    Nothing is dropped, so joining the pieces gives back the text. The fast path is one `findall`;
    the gaps are only searched for when the matches do not cover the whole text.
    """
    if regex.groups == 0:  # findall returns the groups instead of the matches otherwise
        pieces = regex.findall(text)
        if sum(map(len, pieces)) == len(text) and "" not in pieces:
            return pieces
    out: list[str] = []
    pos = 0
    for m in regex.finditer(text):
        if m.start() == m.end():
            continue  # Oniguruma-based splitters ignore empty matches
        if m.start() > pos:
            out.append(text[pos : m.start()])
        out.append(m.group(0))
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    return out


def pretokenize(text: str, pattern: str = DEFAULT_PATTERN) -> list[str]:
    """Split text into words with a HF-syntax pattern (the default: danlu's GPT-2-style pattern)."""
    return split_isolated(compile_pattern(pattern), text)


# --- the pre-tokenizer pipeline, read from / written to a Hugging Face `pre_tokenizer` entry -------------


def _pieces(regex: re.Pattern[str], text: str) -> list[tuple[str, bool]]:
    """Text as (piece, matched) covering it in order; empty matches ignored."""
    out: list[tuple[str, bool]] = []
    pos = 0
    for m in regex.finditer(text):
        if m.start() == m.end():
            continue
        if m.start() > pos:
            out.append((text[pos : m.start()], False))
        out.append((m.group(0), True))
        pos = m.end()
    if pos < len(text):
        out.append((text[pos:], False))
    return out


def split_with_behavior(regex: re.Pattern[str], text: str, behavior: str, invert: bool = False) -> list[str]:
    """Hugging Face `Split` semantics: the matches are delimiters, kept according to behavior."""
    pieces = [(p, m != invert) for p, m in _pieces(regex, text)]
    behavior = behavior.lower()
    if behavior == "isolated":
        return [p for p, _ in pieces]
    if behavior == "removed":
        return [p for p, is_delim in pieces if not is_delim]
    out: list[str] = []
    previous_delim = False
    if behavior == "mergedwithprevious":  # a delimiter joins the piece before it, unless that is one too
        for p, is_delim in pieces:
            if is_delim and not previous_delim and out:
                out[-1] += p
            else:
                out.append(p)
            previous_delim = is_delim
        return out
    if behavior == "mergedwithnext":  # the mirror image, scanning from the end
        for p, is_delim in reversed(pieces):
            if is_delim and not previous_delim and out:
                out[-1] = p + out[-1]
            else:
                out.append(p)
            previous_delim = is_delim
        return out[::-1]
    if behavior == "contiguous":  # runs of delimiters (or of adjacent non-delimiters) become one piece
        for p, is_delim in pieces:
            if is_delim == previous_delim and out:
                out[-1] += p
            else:
                out.append(p)
            previous_delim = is_delim
        return out
    raise DanluError(f"unsupported Split behavior {behavior!r} in tokenizer.json pre_tokenizer")


class PreTokenizer:
    """A Hugging Face `pre_tokenizer` entry made callable: text -> list of words.

    Supported types: Sequence, Split, ByteLevel (its regex and add_prefix_space; the byte mapping itself
    is done by the byte-level BPE model), Digits. The config dict is kept as given, so saving writes it back.
    """

    def __init__(self, config: dict | None) -> None:
        self.config = config
        self._steps: list = []
        self.byte_level = False
        self.metaspace: tuple[str, str] | None = None  # (replacement, prepend_scheme) for Unigram / SPM
        self._add(config)
        # Fast path: one Isolated regex split (danlu's default and LLaMA-3 / Qwen style tokenizers).
        self._fast = None
        if len(self._steps) == 1 and self._steps[0][0] == "isolated":
            self._fast = self._steps[0][1]

    def _add(self, config: dict | None) -> None:
        if config is None:
            return
        kind = config.get("type")
        if kind == "Sequence":
            for sub in config.get("pretokenizers", []):
                self._add(sub)
        elif kind == "Split":
            pattern = config.get("pattern", {})
            if "Regex" in pattern:
                regex = compile_pattern(pattern["Regex"])
            elif "String" in pattern:
                regex = re.compile(re.escape(pattern["String"]))
            else:
                raise DanluError(f"Split pre-tokenizer without a pattern: {config}")
            behavior, invert = str(config.get("behavior", "Isolated")).lower(), bool(config.get("invert"))
            if behavior == "isolated" and not invert:
                self._steps.append(("isolated", regex))
            else:
                self._steps.append(("split", (regex, behavior, invert)))
        elif kind == "ByteLevel":
            self.byte_level = True
            if config.get("add_prefix_space"):
                self._steps.append(("prefix_space", None))
            if config.get("use_regex", True):
                self._steps.append(("isolated", compile_pattern(GPT2_PATTERN)))
        elif kind == "Digits":
            pattern = r"\p{N}" if config.get("individual_digits") else r"\p{N}+"
            self._steps.append(("isolated", compile_pattern(pattern)))
        elif kind == "BertPreTokenizer":  # words and single punctuation marks; whitespace dropped
            self._steps.append(("keep", _bert_words_regex()))
        elif kind == "Whitespace":  # \w+|[^\w\s]+, everything else dropped
            self._steps.append(("keep", compile_pattern(r"\w+|[^\w\s]+")))
        elif kind == "WhitespaceSplit":
            self._steps.append(("keep", compile_pattern(r"\S+")))
        elif kind == "Punctuation":
            regex = re.compile("[" + _punctuation_class() + "]")
            self._steps.append(("split", (regex, str(config.get("behavior", "Isolated")).lower(), False)))
        elif kind == "Metaspace":
            self.metaspace = (config.get("replacement", "\u2581"), config.get("prepend_scheme", "always"))
            if config.get("add_prefix_space") is False and "prepend_scheme" not in config:
                self.metaspace = (self.metaspace[0], "never")
            self._steps.append(("metaspace", (self.metaspace, config.get("split", True))))
        else:
            raise DanluError(f"unsupported pre_tokenizer type {kind!r} in tokenizer.json")

    def __call__(self, text: str, first: bool = True) -> list[str]:
        """Words of text; first says whether text starts the input (Metaspace's "first" scheme)."""
        if self._fast is not None:
            return split_isolated(self._fast, text)
        pieces = [text]
        for kind, arg in self._steps:
            if kind == "keep":
                pieces = [q for p in pieces for q in arg.findall(p)]
                continue
            if kind == "metaspace":
                pieces = [q for j, p in enumerate(pieces) for q in _metaspace(p, *arg, first and j == 0)]
                continue
            if kind == "isolated":
                pieces = [q for p in pieces for q in split_isolated(arg, p)]
            elif kind == "split":
                pieces = [q for p in pieces for q in split_with_behavior(arg[0], p, arg[1], arg[2])]
            elif kind == "prefix_space":
                pieces = [p if p.startswith(" ") else " " + p for p in pieces]
        return pieces

    def __bool__(self) -> bool:
        return bool(self._steps)

    @classmethod
    def from_pattern(cls, pattern: str = DEFAULT_PATTERN) -> PreTokenizer:
        """danlu's layout: one Isolated regex Split, then ByteLevel without its own regex."""
        return cls(
            {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
                    {
                        "type": "ByteLevel",
                        "add_prefix_space": False,
                        "trim_offsets": True,
                        "use_regex": False,
                    },
                ],
            }
        )


@functools.cache
def _punctuation_class() -> str:
    """BERT's punctuation: ASCII punctuation (which includes symbols like $ + < = > ^ ` |) and Unicode P*."""
    ascii_punct = [(c, c) for c in range(0x21, 0x7F) if not chr(c).isalnum()]
    return _class_body(tuple(sorted(set(category_ranges("P")) | set(ascii_punct))))


@functools.cache
def _bert_words_regex() -> re.Pattern[str]:
    ws = _class_body(tuple(_WHITE_SPACE))
    punct = _punctuation_class()
    return re.compile(f"[^{ws}{punct}]+|[{punct}]")


def _metaspace(text: str, options: tuple[str, str], split: bool, first: bool) -> list[str]:
    """SentencePiece-style: spaces become the replacement ("▁"), one is prepended, and each "▁" starts a word."""
    replacement, scheme = options
    text = text.replace(" ", replacement)
    if text and (scheme == "always" or (scheme == "first" and first)) and not text.startswith(replacement):
        text = replacement + text
    if not split:
        return [text] if text else []
    return split_with_behavior(re.compile(re.escape(replacement)), text, "mergedwithnext")
