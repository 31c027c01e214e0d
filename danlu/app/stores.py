"""An embedded, persistent vector store: SQLite holds the texts, metadata and float32 vectors; search is exact
cosine similarity with numpy (vectors are unit length, so cosine = dot product), optionally through FAISS.

Notes 003 §LangChain: "对接向量存储与搜索" and "这些块被存储为 embedding". No server, one file:

    store = VectorStore("rag.sqlite", HashingEmbeddings())
    ids = store.add(documents)                       # Documents, or texts (+ metadatas)
    store.search("capital of Hetoris", k=3)          # [Hit(id, text, metadata, score), ...] best first
    store.search("...", k=3, filter={"lang": "en"})  # metadata filters: value, or a list of allowed values
    store.mmr("...", k=3, fetch_k=20)                # maximal marginal relevance: relevant AND diverse
    store.delete(ids=[...]) / store.delete(filter={"source": "a.md"})

The store remembers which embedder built it (name and dimension) and refuses to mix vectors of two embedders.
Exact search is O(N·dim) per query: a few milliseconds for 100k chunks of 384 floats. `use_faiss=True` hands
unfiltered searches to a FAISS flat inner-product index (the same exact results, faster on large stores).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from danlu.app.embeddings import Embeddings, HashingEmbeddings, default_embeddings
from danlu.app.loaders import Document
from danlu.errors import DanluError


@dataclass
class Hit:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    score: float = 0.0


def _matches(meta: dict[str, Any], flt: dict[str, Any]) -> bool:
    for key, want in flt.items():
        have = meta.get(key)
        if isinstance(want, list | tuple | set | frozenset):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


def embeddings_by_name(name: str) -> Embeddings:
    """Re-create the embedder a store was built with, from the name it recorded."""
    if name.startswith("hashing-"):
        return HashingEmbeddings(int(name.split("-", 1)[1]))
    emb = default_embeddings()
    if emb.name != name:
        raise DanluError(
            f"this store was built with embeddings {name!r}; pass that embedder (e.g. BertEmbeddings(path))"
        )
    return emb


class VectorStore:
    """See the module docstring. path=":memory:" keeps everything in RAM."""

    def __init__(
        self, path: str | Path = ":memory:", embeddings: Embeddings | None = None, use_faiss: bool = False
    ) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self.db = sqlite3.connect(self.path, check_same_thread=False)
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS chunks (id TEXT PRIMARY KEY, text TEXT NOT NULL, "
                "metadata TEXT NOT NULL, vector BLOB NOT NULL)"
            )
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.db.commit()
            recorded = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as e:
            raise DanluError(f"{self.path} is not a danlu vector store ({e}); choose another path") from e
        if embeddings is None:
            embeddings = embeddings_by_name(recorded["embeddings"]) if recorded else default_embeddings()
        if recorded and (recorded["embeddings"] != embeddings.name or int(recorded["dim"]) != embeddings.dim):
            raise DanluError(
                f"{self.path} was built with embeddings {recorded['embeddings']!r} (dim {recorded['dim']}), not "
                f"{embeddings.name!r} (dim {embeddings.dim}); use the same embedder or a new store"
            )
        if not recorded:
            self.db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("embeddings", embeddings.name), ("dim", str(embeddings.dim))],
            )
            self.db.commit()
        self.embeddings = embeddings
        self.use_faiss = use_faiss
        if use_faiss:
            try:
                import faiss  # noqa: F401
            except ImportError as e:
                raise DanluError("use_faiss=True needs the faiss package: pip install faiss-cpu") from e
        self._cache: tuple[list[str], list[str], list[dict], np.ndarray] | None = None
        self._faiss_index: Any = None

    # --- writing ------------------------------------------------------------------------------------------
    def add(
        self,
        items: Sequence[Document] | Sequence[str],
        metadatas: Sequence[dict[str, Any]] | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[str]:
        """Embed and store texts (or Documents); returns their ids. The default id is a hash of the text and
        metadata, so adding the same chunk twice keeps one copy."""
        texts = [d.text if isinstance(d, Document) else d for d in items]
        if not all(isinstance(t, str) for t in texts):
            raise DanluError("VectorStore.add takes Documents or strings")
        metas = [dict(d.metadata) if isinstance(d, Document) else {} for d in items]
        if metadatas is not None:
            if len(metadatas) != len(texts):
                raise DanluError(f"{len(texts)} texts but {len(metadatas)} metadatas; give one per text")
            metas = [{**m, **dict(x)} for m, x in zip(metas, metadatas)]
        if ids is None:
            ids = [
                hashlib.sha256(json.dumps([t, m], sort_keys=True, default=str).encode()).hexdigest()[:16]
                for t, m in zip(texts, metas)
            ]
        elif len(ids) != len(texts):
            raise DanluError(f"{len(texts)} texts but {len(ids)} ids; give one per text")
        if not texts:
            return []
        vectors = np.asarray(self.embeddings.embed_documents(texts), dtype=np.float32)
        rows = [
            (i, t, json.dumps(m, ensure_ascii=False, default=str), v.tobytes())
            for i, t, m, v in zip(ids, texts, metas, vectors)
        ]
        with self._lock:
            self.db.executemany(
                "INSERT OR REPLACE INTO chunks (id, text, metadata, vector) VALUES (?, ?, ?, ?)", rows
            )
            self.db.commit()
            self._cache = None
        return list(ids)

    def delete(self, ids: Sequence[str] | None = None, filter: dict[str, Any] | None = None) -> int:
        """Delete by ids and/or by a metadata filter; returns how many chunks went."""
        if ids is None and filter is None:
            raise DanluError("delete needs ids or a filter (to empty the store, delete its file)")
        doomed = set(ids or [])
        if filter is not None:
            all_ids, _, metas, _ = self._load()
            doomed |= {i for i, m in zip(all_ids, metas) if _matches(m, filter)}
        with self._lock:
            n = 0
            for i in doomed:
                n += self.db.execute("DELETE FROM chunks WHERE id = ?", (i,)).rowcount
            self.db.commit()
            self._cache = None
        return n

    # --- reading ------------------------------------------------------------------------------------------
    def _load(self) -> tuple[list[str], list[str], list[dict], np.ndarray]:
        with self._lock:
            if self._cache is None:
                rows = self.db.execute(
                    "SELECT id, text, metadata, vector FROM chunks ORDER BY rowid"
                ).fetchall()
                dim = self.embeddings.dim
                matrix = (
                    np.stack([np.frombuffer(r[3], dtype=np.float32) for r in rows])
                    if rows
                    else np.zeros((0, dim), np.float32)
                )  # (N, dim)
                self._cache = (
                    [r[0] for r in rows],
                    [r[1] for r in rows],
                    [json.loads(r[2]) for r in rows],
                    matrix,
                )
                self._faiss_index = None
            return self._cache

    def __len__(self) -> int:
        with self._lock:
            return self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def get(self, ids: Sequence[str]) -> list[Hit]:
        ids_, texts, metas, _ = self._load()
        where = {i: n for n, i in enumerate(ids_)}
        return [Hit(i, texts[where[i]], metas[where[i]], 1.0) for i in ids if i in where]

    def _scores(self, vector: np.ndarray, filter: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
        """(candidate row numbers, their cosine scores) for a query vector."""
        ids, _, metas, matrix = self._load()
        rows = np.arange(len(ids))
        if filter:
            rows = np.array([n for n in rows if _matches(metas[n], filter)], dtype=np.int64)
        return rows, matrix[rows] @ vector.astype(np.float32)  # (n,)

    def search_vector(
        self, vector: np.ndarray, k: int = 4, filter: dict[str, Any] | None = None
    ) -> list[Hit]:
        """The k chunks most similar to `vector`, best first."""
        if not (isinstance(k, int) and k >= 1):
            raise DanluError(f"k must be a positive integer, got {k!r}")
        ids, texts, metas, matrix = self._load()
        if not ids:
            return []
        if self.use_faiss and not filter:
            top, scores = self._faiss_search(vector, min(k, len(ids)))
        else:
            rows, sims = self._scores(vector, filter)
            order = np.argsort(-sims, kind="stable")[:k]
            top, scores = rows[order], sims[order]
        return [Hit(ids[n], texts[n], metas[n], float(s)) for n, s in zip(top, scores)]

    def _faiss_search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        _, _, _, matrix = self._load()
        with self._lock:
            if self._faiss_index is None:
                self._faiss_index = faiss.IndexFlatIP(matrix.shape[1])  # exact inner product
                self._faiss_index.add(np.ascontiguousarray(matrix))
            scores, rows = self._faiss_index.search(vector.astype(np.float32)[None], k)
        return rows[0], scores[0]

    def search(self, query: str, k: int = 4, filter: dict[str, Any] | None = None) -> list[Hit]:
        """The k chunks most similar to the query text, best first (score = cosine similarity)."""
        return self.search_vector(self.embeddings.embed_query(query), k, filter)

    def mmr(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
    ) -> list[Hit]:
        """Maximal marginal relevance (Carbonell & Goldstein 1998): from the fetch_k most similar chunks, pick
        one at a time the chunk maximising  λ·sim(q, d) − (1 − λ)·max_{s ∈ picked} sim(d, s).
        λ = 1 is plain similarity search; smaller λ trades relevance for diversity."""
        if not 0 <= lambda_mult <= 1:
            raise DanluError(f"lambda_mult must be in [0, 1], got {lambda_mult}")
        vector = self.embeddings.embed_query(query)
        candidates = self.search_vector(vector, max(k, fetch_k), filter)
        if not candidates:
            return []
        ids, _, _, matrix = self._load()
        where = {i: n for n, i in enumerate(ids)}
        cand = matrix[[where[h.id] for h in candidates]]  # (C, dim)
        relevance = np.array([h.score for h in candidates])
        pairwise = cand @ cand.T  # (C, C)
        picked: list[int] = []
        while len(picked) < min(k, len(candidates)):
            redundancy = pairwise[:, picked].max(axis=1) if picked else np.zeros(len(candidates))
            score = lambda_mult * relevance - (1 - lambda_mult) * redundancy
            score[picked] = -np.inf
            picked.append(int(np.argmax(score)))
        return [candidates[i] for i in picked]

    def close(self) -> None:
        self.db.close()
