"""Fixtures shared by the tokenizer tests."""

from __future__ import annotations

import pytest
from tok_corpus import make_corpus


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return make_corpus(3000, seed=1)


@pytest.fixture(scope="session")
def bpe(corpus):
    """A byte-level BPE trained on the shared corpus (vocab 1000)."""
    from danlu.tokenizers.bpe import BPETokenizer

    return BPETokenizer.train(corpus, 1000)
