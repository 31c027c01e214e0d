"""Document splitters: cut long texts into chunks a retriever can embed and a prompt can hold.

Notes 003 §LangChain: "用户的数据库（文件）被切成小块" — the user's files are cut into small pieces and each piece is
stored as an embedding.

- `split_recursive`: first cut the text into sentences (`split_sentences`: English `. ! ?` followed by
  whitespace, Chinese `。！？` — closing quotes and brackets stay with their sentence — and blank lines), so that a
  line break inside a hard-wrapped sentence is no boundary. A sentence longer than chunk_size is cut with the
  coarsest separator it contains (lines, then clauses, then words, then characters), recursively. The pieces are
  then packed greedily into chunks of at most chunk_size characters, each new chunk starting with the last pieces
  of the previous one (up to chunk_overlap characters), so a chunk holds whole sentences whenever they fit and a
  fact cut at a boundary is whole in at least one chunk.
- `split_tokens`: windows of chunk_size token ids, stepping chunk_size - chunk_overlap, decoded back to text
  (the budget a model's context actually counts).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from danlu.app.loaders import Document
from danlu.errors import DanluError

DEFAULT_SEPARATORS = ("\n\n", "\n", "。", "！", "？", ". ", "! ", "? ", "；", "; ", "，", ", ", " ", "")
# Where a sentence ends: English terminal punctuation then whitespace (a decimal point or "a.b" is no end);
# Chinese terminal punctuation, whitespace optional (Chinese puts none); closing quotes/brackets belong to the
# sentence they close; a blank line ends whatever precedes it (a heading, a list). Abbreviations such as "e.g. "
# are taken for ends: a chunk boundary there costs little, a cut mid-sentence elsewhere is what this prevents.
_SENTENCE_END = re.compile(
    r"""[.!?]+["'”’)\]]*(?:\s+|$)"""
    r"""|[。！？]+["'”’」』）》]*\s*"""
    r"""|\n[ \t]*\n\s*"""
)


def _check(chunk_size: int, chunk_overlap: int) -> None:
    if not (isinstance(chunk_size, int) and chunk_size > 0):
        raise DanluError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if not (isinstance(chunk_overlap, int) and 0 <= chunk_overlap < chunk_size):
        raise DanluError(f"chunk_overlap must be in [0, chunk_size={chunk_size}), got {chunk_overlap!r}")


def _pieces(text: str, chunk_size: int, separators: tuple[str, ...]) -> list[str]:
    """Cut text into pieces of at most chunk_size characters whose concatenation is text; each separator
    stays at the end of the piece before it."""
    if len(text) <= chunk_size:
        return [text] if text else []
    for i, sep in enumerate(separators):
        if sep == "":
            return [text[j : j + chunk_size] for j in range(0, len(text), chunk_size)]
        if sep in text:
            parts = text.split(sep)
            parts = [p + sep for p in parts[:-1]] + [parts[-1]]
            out: list[str] = []
            for p in parts:
                out += (
                    _pieces(p, chunk_size, separators[i + 1 :]) if len(p) > chunk_size else [p] if p else []
                )
            return out
    return [text[j : j + chunk_size] for j in range(0, len(text), chunk_size)]  # no separator applies


def split_sentences(text: str) -> list[str]:
    """The text's sentences, in order, each keeping its punctuation and the whitespace after it, so that
    "".join(split_sentences(text)) == text."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if m.end() > start:
            out.append(text[start : m.end()])
            start = m.end()
    if start < len(text):
        out.append(text[start:])
    return out


def _sentence_pieces(text: str, chunk_size: int, separators: tuple[str, ...]) -> list[tuple[str, bool]]:
    """(piece, must start a chunk): sentences, and a sentence longer than chunk_size cut recursively by
    `separators`, its first fragment starting a new chunk so the chunk before it ends at a sentence end."""
    out: list[tuple[str, bool]] = []
    for sentence in split_sentences(text):
        if len(sentence) <= chunk_size:
            out.append((sentence, False))
        else:
            out += [(p, n == 0) for n, p in enumerate(_pieces(sentence, chunk_size, separators))]
    return out


def split_recursive(
    text: str,
    chunk_size: int = 500,
    chunk_overlap: int = 50,
    separators: tuple[str, ...] = DEFAULT_SEPARATORS,
    sentences: bool = True,
) -> list[str]:
    """Chunks of at most chunk_size characters (stripped of surrounding whitespace), overlapping by up to
    chunk_overlap characters of whole pieces. sentences=False: no sentence pass, only the separators (in
    order), as LangChain's RecursiveCharacterTextSplitter cuts."""
    _check(chunk_size, chunk_overlap)
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    pieces = (
        _sentence_pieces(text, chunk_size, tuple(separators))
        if sentences
        else [(p, False) for p in _pieces(text, chunk_size, tuple(separators))]
    )
    for piece, fresh in pieces:
        if current and (fresh or size + len(piece) > chunk_size):
            chunks.append("".join(current))
            # Carry the tail of this chunk into the next, while it fits the overlap and leaves room.
            carry: list[str] = []
            carried = 0
            for p in reversed(current):
                if carried + len(p) > chunk_overlap or carried + len(p) + len(piece) > chunk_size:
                    break
                carry.insert(0, p)
                carried += len(p)
            current, size = carry, carried
        current.append(piece)
        size += len(piece)
    if current:
        chunks.append("".join(current))
    return [c.strip() for c in chunks if c.strip()]


def split_tokens(text: str, tokenizer: Any, chunk_size: int = 128, chunk_overlap: int = 16) -> list[str]:
    """Windows of chunk_size tokens of `tokenizer` (anything with encode/decode), overlapping by chunk_overlap.

    A byte-level tokenizer may cut a multi-byte character at a window edge; the edge shows it as U+FFFD."""
    _check(chunk_size, chunk_overlap)
    ids = tokenizer.encode(text)
    step = chunk_size - chunk_overlap
    out = []
    for start in range(0, max(len(ids) - chunk_overlap, 1), step):
        window = ids[start : start + chunk_size]
        if window:
            out.append(tokenizer.decode(window))
    return out


def split_documents(
    documents: list[Document], splitter: Callable[[str], list[str]] | None = None
) -> list[Document]:
    """Each document cut by `splitter` (default: split_recursive with its defaults); chunks keep the
    document's metadata plus `chunk` (index) and `start` (character offset in the document)."""
    splitter = splitter or split_recursive
    out = []
    for doc in documents:
        prev = -1
        for i, chunk in enumerate(splitter(doc.text)):
            # Chunks come in order and each starts after the previous one's start (overlap is a strict tail).
            start = doc.text.find(chunk, prev + 1)
            out.append(Document(chunk, {**doc.metadata, "chunk": i, "start": start}))
            prev = start if start != -1 else prev
    return out
