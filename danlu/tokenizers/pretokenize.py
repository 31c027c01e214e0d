"""Pre-tokenization: split text into "words" before the subword model sees it, and the GPT-2 byte alphabet.

Byte-level BPE (Radford et al. 2019, GPT-2) never sees characters: every word is turned into its UTF-8
bytes, and each byte is shown as one printable Unicode character (`bytes_to_unicode`) so that vocabularies
and merges can be stored as JSON strings. That mapping is the one Hugging Face `tokenizers` uses, so our
`tokenizer.json` files are readable by it.

Patterns are written in Hugging Face (Oniguruma) syntax, with `\\p{L}` / `\\p{N}`, and stored that way in
`tokenizer.json`; `unicode_regex.compile_pattern` compiles them with the `regex` module, which reads
`\\p{L}` and friends as Oniguruma does (the two small differences it rewrites are explained there).
"""

from __future__ import annotations

import functools
import re

from danlu.errors import DanluError
from danlu.tokenizers.components import ComponentSteps
from danlu.tokenizers.safe_regex import compile_file_pattern
from danlu.tokenizers.unicode_regex import (  # noqa: F401  (compile_pattern and the patterns are re-exported)
    DEFAULT_PATTERN,
    GPT2_PATTERN,
    HAN,
    bert_words_regex,
    compile_pattern,
    punctuation_regex,
)


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


def split_isolated(regex: re.Pattern[str], text: str) -> list[str]:
    """Split text into the regex's matches and the gaps between them, in order (HF "Isolated").

    Nothing is dropped, so joining the pieces gives back the text. The fast path is one `findall`;
    the gaps are only searched for when the matches do not cover the whole text.
    """
    if regex.groups == 0:  # findall returns the groups instead of the matches otherwise
        pieces = regex.findall(text)
        if sum(map(len, pieces)) == len(text) and "" not in pieces:
            return pieces
    return [p for p, _ in split_matches(regex, text)]


def pretokenize(text: str, pattern: str = DEFAULT_PATTERN) -> list[str]:
    """Split text into words with a HF-syntax pattern (the default: danlu's GPT-2-style pattern)."""
    return split_isolated(compile_pattern(pattern), text)


# --- the pre-tokenizer pipeline, read from / written to a Hugging Face `pre_tokenizer` entry -------------


def split_matches(regex: re.Pattern[str], text: str) -> list[tuple[str, bool]]:
    """Text as (piece, matched) covering it in order: the regex's matches and the gaps between them; empty
    matches are ignored (as Oniguruma-based splitters do). Special tokens are cut out with it too."""
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
    pieces = [(p, m != invert) for p, m in split_matches(regex, text)]
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


class PreTokenizer(ComponentSteps):
    """A Hugging Face `pre_tokenizer` entry made callable: text -> list of words.

    Supported types: Sequence, Split, ByteLevel (its regex and add_prefix_space; the byte mapping itself
    is done by the byte-level BPE model), Digits. The config dict is kept as given, so saving writes it back.
    """

    parts_key = "pretokenizers"

    def __init__(self, config: dict | None) -> None:
        self.byte_level = False
        self.metaspace: tuple[str, str] | None = None  # (replacement, prepend_scheme) for Unigram / SPM
        super().__init__(config)
        # Fast path: one Isolated regex split (danlu's default and LLaMA-3 / Qwen style tokenizers).
        self._fast = None
        if len(self._steps) == 1 and self._steps[0][0] == "isolated":
            self._fast = self._steps[0][1]

    def _add_one(self, kind: str | None, config: dict) -> None:
        if kind == "Split":
            pattern = config.get("pattern", {})
            if not isinstance(pattern, dict):
                raise DanluError(f"Split pre-tokenizer pattern should be an object, found {pattern!r}")
            if "Regex" in pattern:  # from a file: run under a time limit (safe_regex.py)
                regex = compile_file_pattern(pattern["Regex"], "pre_tokenizer Split")
            elif isinstance(pattern.get("String"), str):
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
            self._steps.append(("keep", bert_words_regex()))
        elif kind == "Whitespace":  # \w+|[^\w\s]+, everything else dropped
            self._steps.append(("keep", compile_pattern(r"\w+|[^\w\s]+")))
        elif kind == "WhitespaceSplit":
            self._steps.append(("keep", compile_pattern(r"\S+")))
        elif kind == "Punctuation":
            regex = punctuation_regex()
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


def _metaspace(text: str, options: tuple[str, str], split: bool, first: bool) -> list[str]:
    """SentencePiece-style: spaces become the replacement ("▁"), one is prepended, and each "▁" starts a word."""
    replacement, scheme = options
    text = text.replace(" ", replacement)
    if text and (scheme == "always" or (scheme == "first" and first)) and not text.startswith(replacement):
        text = replacement + text
    if not split:
        return [text] if text else []
    return split_with_behavior(re.compile(re.escape(replacement)), text, "mergedwithnext")
