"""Response caches: in memory, SQLite (a file, survives restarts) and Redis (shared between processes).

Notes 003 §LangChain: "缓存的支持，比如 in-mem（内存）、SQLite、Redis". A cache maps a key to a completion.
The key is a SHA-256 of the prompt, the model name and EVERY generation option (sorted JSON), so a call that
differs in any option (temperature, stop, seed, max_new_tokens...) is a miss. Caching a sampled completion
(temperature > 0) replays one sample; that is the caller's choice, made visible by `LLM(cache=...)`.

All three share two methods, `get(key) -> str | None` and `set(key, value)`; nothing else is assumed.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Protocol

from danlu.errors import DanluError


def cache_key(prompt: str | list[dict[str, Any]], model: str, options: dict[str, Any]) -> str:
    """A stable key for (prompt or chat messages, model name, generation options)."""
    payload = json.dumps(
        {"prompt": prompt, "model": model, "options": options},
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class Cache(Protocol):
    def get(self, key: str) -> str | None: ...

    def set(self, key: str, value: str) -> None: ...


class MemoryCache:
    """A dict in this process; `max_entries` bounds it (the oldest entry goes first)."""

    def __init__(self, max_entries: int | None = None) -> None:
        self.data: dict[str, str] = {}
        self.max_entries = max_entries
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            return self.data.get(key)

    def set(self, key: str, value: str) -> None:
        with self._lock:
            self.data[key] = value
            if self.max_entries is not None and len(self.data) > self.max_entries:
                del self.data[next(iter(self.data))]  # dicts keep insertion order: the oldest

    def __len__(self) -> int:
        return len(self.data)


class SQLiteCache:
    """One table `cache(key TEXT PRIMARY KEY, value TEXT)` in a SQLite file."""

    def __init__(self, path: str | Path = "danlu_cache.sqlite") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            # One connection shared by threads, serialised by the lock.
            self._db = sqlite3.connect(str(self.path), check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.commit()
        except sqlite3.DatabaseError as e:
            raise DanluError(
                f"cannot open the SQLite cache {self.path} ({e}); delete it or choose another path"
            ) from e

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM cache WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO cache (key, value) VALUES (?, ?)", (key, value))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM cache").fetchone()[0]

    def close(self) -> None:
        self._db.close()


class RedisCache:
    """Keys `prefix + key` in a Redis server (the `redis` package is an optional dependency).

    ttl_seconds=None keeps entries until Redis evicts them."""

    def __init__(
        self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "danlu:", ttl_seconds: int | None = None
    ) -> None:
        try:
            import redis
        except ImportError as e:
            raise DanluError("RedisCache needs the `redis` package: pip install redis") from e
        self.prefix, self.ttl_seconds, self.url = prefix, ttl_seconds, url
        self.client = redis.Redis.from_url(url, decode_responses=True)
        try:
            self.client.ping()
        except redis.exceptions.ConnectionError as e:
            raise DanluError(f"cannot reach Redis at {url} ({e}); start redis-server or fix the URL") from e

    def get(self, key: str) -> str | None:
        return self.client.get(self.prefix + key)

    def set(self, key: str, value: str) -> None:
        self.client.set(self.prefix + key, value, ex=self.ttl_seconds)

    def clear(self) -> None:
        """Delete this cache's keys (those under its prefix) only."""
        for k in self.client.scan_iter(match=self.prefix + "*"):
            self.client.delete(k)
