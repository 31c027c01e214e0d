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

Safe to share across threads and processes: each thread gets its own SQLite connection, the file is in WAL mode
(readers never block the one writer), and the in-memory copy of the vectors is rebuilt when another connection
(another thread or process) has committed since, which SQLite's `PRAGMA data_version` tells. A store whose file or
folder is not writable opens read-only (search works, writes are a DanluError); a full disk, a read-only disk or
text that is not valid Unicode (a lone surrogate) is a DanluError naming the store, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
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

# (ids, texts, metadatas, (N, dim) unit vectors): the store as one operation sees it
_Snapshot = tuple[list[str], list[str], list[dict], np.ndarray]


@dataclass
class Hit:
    """One retrieved chunk. `score` is what the retriever ranked by (cosine for vector search, BM25, or the
    reciprocal-rank-fusion value for hybrid search: ~0.03, meaningful only as an order); `cosine` is the cosine
    similarity of query and chunk embeddings (-1..1) when known: the number to show a reader."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    score: float = 0.0
    cosine: float | None = None


def _matches(meta: dict[str, Any], flt: dict[str, Any]) -> bool:
    for key, want in flt.items():
        have = meta.get(key)
        if isinstance(want, list | tuple | set | frozenset):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


def _check_unicode(value: Any, what: str) -> None:
    """Texts and metadata are stored as UTF-8: a lone surrogate (e.g. from `errors="surrogateescape"` decoding)
    cannot be, so it is rejected here with its position rather than failing deep inside sqlite3 or json."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise DanluError(
                f"{what} contains a lone surrogate {value[e.start]!r} at position {e.start}; texts must be valid "
                "Unicode (decode files with errors='replace')"
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key, f"{what} key")
            _check_unicode(item, f"{what}[{key!r}]")
    elif isinstance(value, list | tuple):
        for n, item in enumerate(value):
            _check_unicode(item, f"{what}[{n}]")


def _sqlite_error(path: str, e: sqlite3.Error) -> DanluError:
    """One DanluError a user can act on for a failed SQLite call (disk full, read-only, locked, corrupt)."""
    text = str(e).lower()
    if "full" in text:
        return DanluError(
            f"the disk holding the vector store {path} is full ({e}); free space or use another path"
        )
    if "readonly" in text or "read-only" in text:
        return DanluError(
            f"the vector store {path} is read-only ({e}); use a writable path or copy the store"
        )
    if "locked" in text or "busy" in text:
        return DanluError(f"the vector store {path} stayed locked by another writer ({e}); retry later")
    if "unable to open" in text:
        return DanluError(
            f"cannot open the vector store {path} ({e}); check the folder exists and is writable"
        )
    return DanluError(f"{path} is not a danlu vector store ({e}); choose another path")


def _writable(path: str) -> bool:
    """Whether SQLite may write the store: the file (when it exists) and its folder (WAL puts -wal/-shm files
    next to it) both writable."""
    folder = os.path.dirname(os.path.abspath(path))
    return os.access(folder, os.W_OK) and (not os.path.exists(path) or os.access(path, os.W_OK))


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
        self._memory = self.path == ":memory:"
        self.read_only = False
        if not self._memory:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise DanluError(f"cannot create the folder for the vector store {self.path}: {e}") from e
            self.read_only = not _writable(self.path)
            if self.read_only and not os.path.exists(self.path):
                raise DanluError(f"cannot create the vector store {self.path}: its folder is not writable")
        self._lock = threading.RLock()
        self._local = threading.local()  # this thread's connection and the data_version it last saw
        self._connections: dict[int, sqlite3.Connection] = {}  # by thread id
        self._shared: sqlite3.Connection | None = None  # ":memory:": one database, so one connection
        self._cache: _Snapshot | None = None
        self._faiss_index: tuple[np.ndarray, Any] | None = None  # (the matrix it indexes, the index)
        try:
            db = self._db()
            if not self.read_only:
                with self._lock:
                    db.execute(
                        "CREATE TABLE IF NOT EXISTS chunks (id TEXT PRIMARY KEY, text TEXT NOT NULL, "
                        "metadata TEXT NOT NULL, vector BLOB NOT NULL)"
                    )
                    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                    db.commit()
            recorded = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as e:
            self.close()
            raise _sqlite_error(self.path, e) from e
        if embeddings is None:
            embeddings = embeddings_by_name(recorded["embeddings"]) if recorded else default_embeddings()
        if recorded and (recorded["embeddings"] != embeddings.name or int(recorded["dim"]) != embeddings.dim):
            raise DanluError(
                f"{self.path} was built with embeddings {recorded['embeddings']!r} (dim {recorded['dim']}), not "
                f"{embeddings.name!r} (dim {embeddings.dim}); use the same embedder or a new store"
            )
        if not recorded:
            self._write(
                lambda db: db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("embeddings", embeddings.name), ("dim", str(embeddings.dim))],
                )
            )
        self.embeddings = embeddings
        self.use_faiss = use_faiss
        if use_faiss:
            try:
                import faiss  # noqa: F401
            except ImportError as e:
                raise DanluError("use_faiss=True needs the faiss package: pip install faiss-cpu") from e

    # --- connections --------------------------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections must not be shared between threads without a lock)."""
        if self._memory:
            with self._lock:
                if self._shared is None:
                    self._shared = sqlite3.connect(":memory:", check_same_thread=False)
                return self._shared
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = self._connect()
            except sqlite3.Error as e:
                raise _sqlite_error(self.path, e) from e
            self._local.db, self._local.version = db, None
            with self._lock:
                # Close the connections of threads that have ended (a server's worker threads come and go).
                alive = {t.ident for t in threading.enumerate()}
                for ident in [i for i in self._connections if i not in alive]:
                    self._connections.pop(ident).close()
                self._connections[threading.get_ident()] = db
        return db

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False only so that close() may close it from another thread: one thread uses it.
        if self.read_only:  # immutable: no -wal/-shm files to create beside a file we may not write
            uri = f"file:{Path(self.path).absolute()}?mode=ro&immutable=1"
            return sqlite3.connect(uri, uri=True, check_same_thread=False)
        db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)  # waits 30 s for other writers
        db.execute("PRAGMA journal_mode=WAL")  # readers and one writer at once, across processes
        return db

    def _write(self, action: Any) -> None:
        """Run `action(connection)` and commit, as one transaction; drop the cache. SQLite errors -> DanluError."""
        if self.read_only:
            raise DanluError(
                f"the vector store {self.path} is read-only (file or folder not writable); use a writable path"
            )
        db = self._db()
        with self._lock:  # also orders this write against a cache rebuild in another thread
            try:
                action(db)
                db.commit()
            except sqlite3.Error as e:
                db.rollback()
                raise _sqlite_error(self.path, e) from e
            finally:
                self._cache = None

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
        for n, t in enumerate(texts):
            _check_unicode(t, f"text {n}")
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
        for n, (i, m) in enumerate(zip(ids, metas)):
            _check_unicode(i, f"id {n}")
            _check_unicode(m, f"metadata {n}")
        if not texts:
            return []
        vectors = np.asarray(self.embeddings.embed_documents(texts), dtype=np.float32)
        rows = [
            (i, t, json.dumps(m, ensure_ascii=False, default=str), v.tobytes())
            for i, t, m, v in zip(ids, texts, metas, vectors)
        ]
        self._write(
            lambda db: db.executemany(
                "INSERT OR REPLACE INTO chunks (id, text, metadata, vector) VALUES (?, ?, ?, ?)", rows
            )
        )
        return list(ids)

    def delete(self, ids: Sequence[str] | None = None, filter: dict[str, Any] | None = None) -> int:
        """Delete by ids and/or by a metadata filter; returns how many chunks went."""
        if ids is None and filter is None:
            raise DanluError("delete needs ids or a filter (to empty the store, delete its file)")
        doomed = set(ids or [])
        if filter is not None:
            all_ids, _, metas, _ = self._load()
            doomed |= {i for i, m in zip(all_ids, metas) if _matches(m, filter)}
        deleted = [0]

        def delete_rows(db: sqlite3.Connection) -> None:
            for i in doomed:
                deleted[0] += db.execute("DELETE FROM chunks WHERE id = ?", (i,)).rowcount

        self._write(delete_rows)
        return deleted[0]

    # --- reading ------------------------------------------------------------------------------------------
    def _load(self) -> _Snapshot:
        """A snapshot (ids, texts, metadatas, (N, dim) matrix) of the store. Callers use ONE snapshot per
        operation: a write from another thread may replace the cache at any moment."""
        db = self._db()
        with self._lock:
            try:
                if not self._memory:
                    # data_version changes when any OTHER connection (thread or process) has committed.
                    version = db.execute("PRAGMA data_version").fetchone()[0]
                    if version != self._local.version:
                        self._local.version, self._cache = version, None
                if self._cache is None:
                    rows = db.execute(
                        "SELECT id, text, metadata, vector FROM chunks ORDER BY rowid"
                    ).fetchall()
                    self._faiss_index = None
                else:
                    return self._cache
            except sqlite3.Error as e:
                raise _sqlite_error(self.path, e) from e
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
            return self._cache

    def __len__(self) -> int:
        db = self._db()
        with self._lock:
            try:
                return db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
            except sqlite3.Error as e:
                raise _sqlite_error(self.path, e) from e

    def get(self, ids: Sequence[str]) -> list[Hit]:
        ids_, texts, metas, _ = self._load()
        where = {i: n for n, i in enumerate(ids_)}
        return [Hit(i, texts[where[i]], metas[where[i]], 1.0) for i in ids if i in where]

    def _scores(
        self, snap: _Snapshot, vector: np.ndarray, filter: dict[str, Any] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(candidate row numbers, their cosine scores) for a query vector, in one snapshot."""
        ids, _, metas, matrix = snap
        rows = np.arange(len(ids))
        if filter:
            rows = np.array([n for n in rows if _matches(metas[n], filter)], dtype=np.int64)
        return rows, matrix[rows] @ vector.astype(np.float32)  # (n,)

    def _top(
        self, snap: _Snapshot, vector: np.ndarray, k: int, filter: dict[str, Any] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(row numbers, scores) of the k best rows of one snapshot, best first."""
        if self.use_faiss and not filter:
            return self._faiss_search(snap, vector, min(k, len(snap[0])))
        rows, sims = self._scores(snap, vector, filter)
        order = np.argsort(-sims, kind="stable")[:k]
        return rows[order], sims[order]

    def search_vector(
        self, vector: np.ndarray, k: int = 4, filter: dict[str, Any] | None = None
    ) -> list[Hit]:
        """The k chunks most similar to `vector`, best first."""
        if not (isinstance(k, int) and k >= 1):
            raise DanluError(f"k must be a positive integer, got {k!r}")
        snap = self._load()
        ids, texts, metas, _ = snap
        if not ids:
            return []
        top, scores = self._top(snap, vector, k, filter)
        return [Hit(ids[n], texts[n], metas[n], float(s), float(s)) for n, s in zip(top, scores)]

    def _faiss_search(self, snap: _Snapshot, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        matrix = snap[3]
        with self._lock:
            if self._faiss_index is None or self._faiss_index[0] is not matrix:  # built for this snapshot
                index = faiss.IndexFlatIP(matrix.shape[1])  # exact inner product
                index.add(np.ascontiguousarray(matrix))
                self._faiss_index = (matrix, index)
            scores, rows = self._faiss_index[1].search(vector.astype(np.float32)[None], k)
        return rows[0], scores[0]

    def search(self, query: str, k: int = 4, filter: dict[str, Any] | None = None) -> list[Hit]:
        """The k chunks most similar to the query text, best first (score = cosine similarity)."""
        return self.search_vector(self._query_vector(query), k, filter)

    def cosine(self, query: str, ids: Sequence[str]) -> dict[str, float]:
        """Cosine similarity of the query to each stored chunk among `ids` (ids not in the store are left out)."""
        vector = self._query_vector(query)
        ids_, _, _, matrix = self._load()
        where = {i: n for n, i in enumerate(ids_)}
        rows = [where[i] for i in ids if i in where]
        sims = matrix[rows] @ vector  # (n,)
        return {ids_[n]: float(s) for n, s in zip(rows, sims)}

    def _query_vector(self, query: str) -> np.ndarray:
        if not isinstance(query, str):
            raise DanluError(f"a query must be a string, got {type(query).__name__}")
        _check_unicode(query, "the query")
        return np.asarray(self.embeddings.embed_query(query), dtype=np.float32)

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
        vector = self._query_vector(query)
        snap = self._load()
        ids, texts, metas, matrix = snap
        if not ids:
            return []
        rows, relevance = self._top(snap, vector, max(k, fetch_k), filter)
        candidates = [Hit(ids[n], texts[n], metas[n], float(s), float(s)) for n, s in zip(rows, relevance)]
        cand = matrix[rows]  # (C, dim)
        pairwise = cand @ cand.T  # (C, C)
        picked: list[int] = []
        while len(picked) < min(k, len(candidates)):
            redundancy = pairwise[:, picked].max(axis=1) if picked else np.zeros(len(candidates))
            score = lambda_mult * relevance - (1 - lambda_mult) * redundancy
            score[picked] = -np.inf
            picked.append(int(np.argmax(score)))
        return [candidates[i] for i in picked]

    def close(self) -> None:
        """Close every thread's connection (a thread that uses the store afterwards opens a new one)."""
        with self._lock:
            for db in self._connections.values():
                db.close()
            self._connections.clear()
            if self._shared is not None:
                self._shared.close()
                self._shared = None
            self._local = threading.local()
