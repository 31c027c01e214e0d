"""Tokenizers: byte-level BPE, WordPiece and Unigram, Hugging Face tokenizer.json and GGUF compatible.

from danlu.tokenizers import BPETokenizer, Tokenizer
tok = BPETokenizer.train(texts, vocab_size=4096)
tok.save("out/tokenizer");  tok = Tokenizer.load("out/tokenizer")
"""

from __future__ import annotations

from typing import Any

# io.py sets the loader `Tokenizer.load` calls; importing it here sets it before any module of the package runs
from danlu.tokenizers import io as _io  # noqa: F401

__all__ = ["Tokenizer", "BPETokenizer", "WordPieceTokenizer", "UnigramTokenizer"]
_WHERE = {
    "Tokenizer": "danlu.tokenizers.base",
    "BPETokenizer": "danlu.tokenizers.bpe",
    "WordPieceTokenizer": "danlu.tokenizers.wordpiece",
    "UnigramTokenizer": "danlu.tokenizers.unigram",
}


def __getattr__(name: str) -> Any:
    # Lazy, so importing one kind does not import the others.
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'danlu.tokenizers' has no attribute {name!r}")
