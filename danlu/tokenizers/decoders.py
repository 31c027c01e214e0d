"""Decoders: token strings -> text, for tokenizers whose tokens are not raw bytes (Unigram, SentencePiece
BPE). A Hugging Face `decoder` entry made callable; supported types: Metaspace, ByteFallback, Fuse,
Strip, Replace, Sequence (and ByteLevel / WordPiece are handled by their own models).
"""

from __future__ import annotations

import re

from danlu.errors import DanluError
from danlu.tokenizers.components import ComponentSteps
from danlu.tokenizers.safe_regex import compile_file_pattern

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _metaspace(tokens: list[str], replacement: str, prepend_scheme: str) -> list[str]:
    # "▁" means a space; the first token's leading "▁" was added by the pre-tokenizer, so it is dropped.
    out = []
    for i, token in enumerate(tokens):
        if i == 0 and prepend_scheme != "never" and token.startswith(replacement):
            token = token[len(replacement) :]
        out.append(token.replace(replacement, " "))
    return out


def _byte_fallback(tokens: list[str]) -> list[str]:
    """Runs of <0xXX> tokens become their UTF-8 text, or one U+FFFD per byte when not valid UTF-8."""
    out: list[str] = []
    pending = bytearray()

    def flush() -> None:
        if pending:
            try:
                out.append(pending.decode("utf-8"))
            except UnicodeDecodeError:
                out.extend("\ufffd" * len(pending))
            pending.clear()

    for token in tokens:
        m = _BYTE_TOKEN.fullmatch(token)
        if m:
            pending.append(int(m.group(1), 16))
        else:
            flush()
            out.append(token)
    flush()
    return out


def _strip(tokens: list[str], content: str, start: int, stop: int) -> list[str]:
    out = []
    for token in tokens:
        for _ in range(start):
            if not token.startswith(content):
                break
            token = token[len(content) :]
        for _ in range(stop):
            if not token.endswith(content):
                break
            token = token[: -len(content)]
        out.append(token)
    return out


class Decoder(ComponentSteps):
    """A Hugging Face `decoder` entry applied to a list of token strings."""

    parts_key = "decoders"

    def _add_one(self, kind: str | None, config: dict) -> None:
        if kind == "Metaspace":
            replacement = config.get("replacement", "\u2581")
            scheme = config.get("prepend_scheme")
            if scheme is None:
                scheme = "always" if config.get("add_prefix_space", True) else "never"
            self._steps.append(lambda t, r=replacement, s=scheme: _metaspace(t, r, s))
        elif kind == "ByteFallback":
            self._steps.append(_byte_fallback)
        elif kind == "Fuse":
            self._steps.append(lambda t: ["".join(t)])
        elif kind == "Strip":
            content, start, stop = config.get("content", " "), config.get("start", 0), config.get("stop", 0)
            self._steps.append(lambda t, c=content, a=start, b=stop: _strip(t, c, a, b))
        elif kind == "Replace":
            pattern, content = config.get("pattern", {}), config.get("content", "")
            if isinstance(pattern, dict) and "Regex" in pattern:  # from a file: under a time limit
                regex = compile_file_pattern(pattern["Regex"], "decoder Replace")
                self._steps.append(lambda t, r=regex, c=content: [r.sub(lambda m: c, x) for x in t])
            else:
                s = pattern.get("String", "")
                self._steps.append(lambda t, s=s, c=content: [x.replace(s, c) if s else x for x in t])
        else:
            raise DanluError(f"unsupported decoder type {kind!r} in tokenizer.json")

    def __call__(self, tokens: list[str]) -> str:
        for step in self._steps:
            tokens = step(tokens)
        return "".join(tokens)
