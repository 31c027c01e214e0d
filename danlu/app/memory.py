"""Agent memory (notes 002 §Agent: "记忆（短、长期）"): short-term memory is the last few turns of the
conversation, kept verbatim; long-term memory is every past exchange embedded in a vector store and recalled by
similarity to the current question. Both render as plain text that goes into the prompt, visibly.
"""

from __future__ import annotations

from typing import Any

from danlu.app.embeddings import Embeddings, HashingEmbeddings
from danlu.app.stores import VectorStore
from danlu.errors import DanluError


class WindowMemory:
    """The last `k` messages (a sliding window): older ones fall out."""

    def __init__(self, k: int = 6) -> None:
        if not (isinstance(k, int) and k >= 1):
            raise DanluError(f"WindowMemory k must be a positive integer, got {k!r}")
        self.k = k
        self.history: list[dict[str, str]] = []  # everything, for inspection; the window is the tail

    def add(self, role: str, content: str) -> None:
        self.history.append({"role": role, "content": content})

    def messages(self) -> list[dict[str, str]]:
        return self.history[-self.k :]

    def as_text(self) -> str:
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.messages())

    def clear(self) -> None:
        self.history.clear()


class VectorMemory:
    """Long-term memory: texts in a VectorStore (in memory unless a path is given), recalled by similarity."""

    def __init__(
        self, path: str = ":memory:", embeddings: Embeddings | None = None, k: int = 3, min_score: float = 0.0
    ) -> None:
        self.store = VectorStore(path, embeddings or HashingEmbeddings())
        self.k, self.min_score = k, min_score
        self._n = len(self.store)

    def remember(self, text: str, **metadata: Any) -> str:
        """Store one memory; the running number keeps identical texts from different times apart."""
        self._n += 1
        return self.store.add([text], [{**metadata, "n": self._n}])[0]

    def recall(self, query: str, k: int | None = None) -> list[str]:
        """The k memories most similar to the query (those scoring at least min_score), oldest first."""
        hits = [h for h in self.store.search(query, k or self.k) if h.score >= self.min_score]
        return [h.text for h in sorted(hits, key=lambda h: h.metadata.get("n", 0))]

    def as_text(self, query: str) -> str:
        return "\n".join(f"- {m}" for m in self.recall(query))

    def __len__(self) -> int:
        return len(self.store)
