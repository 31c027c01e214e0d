"""Token usage, accounted per model: prompt, completion and total tokens, requests and cache hits.

Notes 003 §LangChain lists "用量记录" (usage records) among a wrapper's basic functions. Every model wrapper in
`danlu.app.llms` reports each call here, streamed calls included (counted when the stream ends), so
`tracker.report()` answers "what did this run cost" per model. A cache hit costs no tokens and is counted apart.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass


@dataclass
class Usage:
    """Tokens one model consumed. total = prompt + completion (as OpenAI's `usage` object)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0  # calls that reached the model
    cache_hits: int = 0  # calls answered from a cache (no tokens)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_tokens": self.total_tokens}


class UsageTracker:
    """Per-model usage. Thread-safe: the server and `LLM.batch` record from several threads."""

    def __init__(self) -> None:
        self.by_model: dict[str, Usage] = {}
        self._lock = threading.Lock()

    def record(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Count one model call."""
        with self._lock:
            u = self.by_model.setdefault(model, Usage())
            u.prompt_tokens += int(prompt_tokens)
            u.completion_tokens += int(completion_tokens)
            u.requests += 1

    def record_cache_hit(self, model: str) -> None:
        with self._lock:
            self.by_model.setdefault(model, Usage()).cache_hits += 1

    def total(self) -> Usage:
        """The sum over every model."""
        with self._lock:
            out = Usage()
            for u in self.by_model.values():
                out.prompt_tokens += u.prompt_tokens
                out.completion_tokens += u.completion_tokens
                out.requests += u.requests
                out.cache_hits += u.cache_hits
            return out

    def reset(self) -> None:
        with self._lock:
            self.by_model.clear()

    def report(self) -> str:
        """A small table: one line per model, then the total."""
        rows = [("model", "requests", "cache hits", "prompt", "completion", "total")]
        for name, u in sorted(self.by_model.items()):
            rows.append(
                (name, u.requests, u.cache_hits, u.prompt_tokens, u.completion_tokens, u.total_tokens)
            )
        t = self.total()
        rows.append(("(all)", t.requests, t.cache_hits, t.prompt_tokens, t.completion_tokens, t.total_tokens))
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
