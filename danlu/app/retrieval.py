"""Retrieval: BM25 keyword search, vector search, and hybrid retrieval by reciprocal rank fusion.

The retrieval flow of notes 003 §LangChain: question -> search the user's vector store -> hand the hits to the
model -> answer. A retriever is anything with `retrieve(query) -> list[Hit]` (best first).

BM25 (Robertson & Zaragoza 2009), for query terms t and a document d of |d| terms:
    score(q, d) = Σ_t IDF(t) · tf(t, d)·(k1 + 1) / (tf(t, d) + k1·(1 − b + b·|d| / avgdl))
    IDF(t) = ln(1 + (N − n_t + 0.5) / (n_t + 0.5))          (never negative)
Reciprocal rank fusion (Cormack, Clarke & Büttcher 2009): score(d) = Σ_r w_r / (rrf_k + rank_r(d)), ranks from 1;
it needs no score calibration between retrievers, only their orderings. Its values (at most
Σ_r w_r / (rrf_k + 1) ≈ 0.03) mean nothing to a reader, so what is shown is `score_label`: the cosine similarity of
the dense retriever (`Hit.cosine`, filled in for every fused hit), or the rank where there is no embedding.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any, Protocol

from danlu.app.embeddings import words
from danlu.app.loaders import Document
from danlu.app.stores import Hit, VectorStore, _matches
from danlu.errors import DanluError


def bm25_terms(text: str) -> list[str]:
    """Words (each Chinese character one word) plus bigrams of adjacent Chinese characters."""
    ws = words(text)
    cjk = [len(w) == 1 and "\u3400" <= w <= "\ufaff" for w in ws]
    return ws + [ws[i] + ws[i + 1] for i in range(len(ws) - 1) if cjk[i] and cjk[i + 1]]


def unique_hits(hits: Sequence[Hit], key: str | None, k: int) -> list[Hit]:
    """The first k hits, keeping only the best hit per metadata[key] (key None: no de-duplication)."""
    if key is None:
        return list(hits[:k])
    out, seen = [], set()
    for h in hits:
        value = h.metadata.get(key, h.id)
        if value not in seen:
            seen.add(value)
            out.append(h)
    return out[:k]


class Retriever(Protocol):
    def retrieve(self, query: str) -> list[Hit]: ...


class BM25Index:
    """An in-memory BM25 index; build it from Documents, texts, or a VectorStore's chunks."""

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        if k1 < 0 or not 0 <= b <= 1:
            raise DanluError(f"BM25 needs k1 >= 0 and b in [0, 1], got k1={k1}, b={b}")
        self.k1, self.b = k1, b
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.metadatas: list[dict[str, Any]] = []
        self.tfs: list[Counter] = []
        self.lengths: list[int] = []  # |d| in terms
        self.df: Counter = Counter()  # documents containing each term
        self.postings: dict[str, list[int]] = defaultdict(list)  # term -> documents containing it
        self.total_len = 0

    @classmethod
    def from_store(cls, store: VectorStore, **kwargs: Any) -> BM25Index:
        index = cls(**kwargs)
        ids, texts, metas, _ = store._load()
        index.add(texts, metas, ids)
        return index

    def add(
        self,
        items: Sequence[Document] | Sequence[str],
        metadatas: Sequence[dict[str, Any]] | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[str]:
        texts = [d.text if isinstance(d, Document) else d for d in items]
        metas = (
            list(metadatas)
            if metadatas is not None
            else [dict(d.metadata) if isinstance(d, Document) else {} for d in items]
        )
        ids = list(ids) if ids is not None else [hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts]
        for i, t, m in zip(ids, texts, metas):
            tf = Counter(bm25_terms(t))
            n = len(self.ids)
            self.ids.append(i)
            self.texts.append(t)
            self.metadatas.append(m)
            self.tfs.append(tf)
            self.lengths.append(sum(tf.values()))
            self.total_len += self.lengths[-1]
            for term in tf:
                self.df[term] += 1
                self.postings[term].append(n)
        return ids

    def __len__(self) -> int:
        return len(self.ids)

    def idf(self, term: str) -> float:
        N, n_t = len(self.ids), self.df.get(term, 0)
        return math.log(1 + (N - n_t + 0.5) / (n_t + 0.5))

    def search(self, query: str, k: int = 4, filter: dict[str, Any] | None = None) -> list[Hit]:
        """The k best-scoring documents (only those sharing a term with the query), best first."""
        if not self.ids:
            return []
        avgdl = self.total_len / len(self.ids)
        scores: dict[int, float] = defaultdict(float)
        for term in set(bm25_terms(query)):
            idf = self.idf(term)
            for n in self.postings.get(term, []):
                tf, dl = self.tfs[n][term], self.lengths[n]
                scores[n] += idf * tf * (self.k1 + 1) / (tf + self.k1 * (1 - self.b + self.b * dl / avgdl))
        ranked = sorted(scores.items(), key=lambda x: (-x[1], x[0]))
        if filter:
            ranked = [(n, s) for n, s in ranked if _matches(self.metadatas[n], filter)]
        return [Hit(self.ids[n], self.texts[n], self.metadatas[n], s) for n, s in ranked[:k]]


class VectorRetriever:
    """Similarity (or MMR) search in a VectorStore."""

    def __init__(
        self,
        store: VectorStore,
        k: int = 4,
        filter: dict[str, Any] | None = None,
        mmr: bool = False,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        unique: str | None = None,
    ) -> None:
        self.store, self.k, self.filter = store, k, filter
        self.mmr, self.fetch_k, self.lambda_mult, self.unique = mmr, fetch_k, lambda_mult, unique

    def retrieve(self, query: str) -> list[Hit]:
        n = self.k if self.unique is None else max(self.k, self.fetch_k)
        if self.mmr:
            hits = self.store.mmr(query, n, self.fetch_k, self.lambda_mult, self.filter)
        else:
            hits = self.store.search(query, n, self.filter)
        return unique_hits(hits, self.unique, self.k)


class BM25Retriever:
    """BM25 search; with `unique` it fetches fetch_k hits and keeps the best per metadata[unique]."""

    def __init__(
        self,
        index: BM25Index,
        k: int = 4,
        filter: dict[str, Any] | None = None,
        unique: str | None = None,
        fetch_k: int = 20,
    ) -> None:
        self.index, self.k, self.filter, self.unique, self.fetch_k = index, k, filter, unique, fetch_k

    def retrieve(self, query: str) -> list[Hit]:
        n = self.k if self.unique is None else max(self.k, self.fetch_k)
        return unique_hits(self.index.search(query, n, self.filter), self.unique, self.k)


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Hit]], rrf_k: int = 60, weights: Sequence[float] | None = None
) -> list[Hit]:
    """Fuse ranked lists into one: score(d) = Σ_r w_r / (rrf_k + rank_r(d)). Hits keep their first text/metadata;
    their score becomes the fused score."""
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise DanluError(f"{len(rankings)} rankings but {len(weights)} weights")
    fused: dict[str, float] = defaultdict(float)
    first: dict[str, Hit] = {}
    for w, ranking in zip(weights, rankings):
        for rank, hit in enumerate(ranking, start=1):
            fused[hit.id] += w / (rrf_k + rank)
            first.setdefault(hit.id, hit)
    cosine = {h.id: h.cosine for ranking in rankings for h in ranking if h.cosine is not None}
    order = sorted(fused, key=lambda i: -fused[i])
    return [Hit(i, first[i].text, first[i].metadata, fused[i], cosine.get(i)) for i in order]


def score_label(hit: Hit, rank: int) -> str:
    """The score a reader understands: "cosine 0.62" (query-chunk similarity, -1..1) when known, else the rank
    ("rank 2", e.g. BM25 alone, whose scores have no fixed scale)."""
    return f"cosine {hit.cosine:.3f}" if hit.cosine is not None else f"rank {rank}"


class HybridRetriever:
    """Each retriever fetches its candidates; reciprocal rank fusion keeps the best k (one per
    metadata[unique] when `unique` names a key, e.g. "source": two chunks of one source count once)."""

    def __init__(
        self,
        retrievers: Sequence[Any],
        k: int = 4,
        rrf_k: int = 60,
        weights: Sequence[float] | None = None,
        unique: str | None = None,
        store: VectorStore | None = None,
    ) -> None:
        """`store`: where the chunks' embeddings are, to give every fused hit its cosine similarity (hits that
        only BM25 found have none otherwise)."""
        if not retrievers:
            raise DanluError("HybridRetriever needs at least one retriever")
        self.retrievers, self.k, self.rrf_k, self.weights = list(retrievers), k, rrf_k, weights
        self.unique, self.store = unique, store

    def retrieve(self, query: str) -> list[Hit]:
        rankings = [r.retrieve(query) for r in self.retrievers]
        hits = unique_hits(reciprocal_rank_fusion(rankings, self.rrf_k, self.weights), self.unique, self.k)
        unknown = [h.id for h in hits if h.cosine is None]
        if self.store is not None and unknown:
            cosine = self.store.cosine(query, unknown)
            for h in hits:
                h.cosine = cosine.get(h.id, h.cosine)
        return hits


def hybrid_retriever(
    store: VectorStore, k: int = 4, fetch_k: int = 20, rrf_k: int = 60, unique: str | None = None
) -> HybridRetriever:
    """Vector search + BM25 over the same store's chunks (fetch_k candidates each), fused by RRF."""
    bm25 = BM25Index.from_store(store)
    retrievers = [VectorRetriever(store, k=fetch_k), BM25Retriever(bm25, k=fetch_k)]
    return HybridRetriever(retrievers, k=k, rrf_k=rrf_k, unique=unique, store=store)


def recall_at_k(retriever: Any, queries: Sequence[tuple[str, str]], key: str = "source") -> float:
    """Share of (query, expected metadata[key]) pairs whose expected value is among the retrieved hits."""
    if not queries:
        raise DanluError("recall_at_k needs at least one (query, expected source) pair")
    found = sum(any(h.metadata.get(key) == want for h in retriever.retrieve(q)) for q, want in queries)
    return found / len(queries)
