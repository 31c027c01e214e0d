"""Dynamic batching: concurrent requests share one batched decode instead of waiting for each other.

A background thread (the worker) takes the first waiting row, waits up to `max_wait_ms` for more, then runs
them as one left-padded batch through the engine (`danlu.generate.engine.decode_prompts`), handing each row its
text pieces as soon as they are safe to show (streaming requests forward them as server-sent events;
non-streaming ones just collect them), and its finish reason and token count as the engine reports them.
Requests that arrive while a batch decodes wait for the next batch.

Rows are grouped by their generation options (the request's own `GenerationOptions` object, hashable): a batch
shares one except `max_new_tokens`
(the batch runs to the largest; each row stops at its own) and `stop` strings (checked per row). A batch also
respects the context: its longest prompt plus its largest max_new_tokens must fit `block_size`, and holds at most
`max_batch_size` sequences, a beam-search row counting as its num_beams.

Work for a client that went away stops: the caller sets `Row.cancelled`; a waiting row is dropped, a decoding
row ends at the next step, and a batch whose rows are all cancelled stops decoding (beam search included,
through the engine's `should_stop` hook). At most `max_in_flight` rows wait or decode at once (503 beyond).

A row is one completion: a request with n choices, or several prompts, submits several rows. Each row reports
through its `emit` callback, called on the worker thread: `RowEvent(piece=...)` for text, then exactly one
final `RowEvent(done=True, finish_reason="stop"|"length", completion_tokens=..., completion=...)` or
`RowEvent(error=...)`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from danlu.errors import DanluError
from danlu.generate.engine import Completion, GenerationOptions, RowDecoder, decode_prompts, stop_token_ids


class Overloaded(Exception):
    """The waiting queue is full: the server answers 503 and the client should retry later."""


@dataclass
class RowEvent:
    piece: str = ""
    done: bool = False
    finish_reason: str | None = None  # "stop" (end-of-text, stop id or stop string) or "length"
    completion_tokens: int = 0
    error: BaseException | None = None
    completion: Completion | None = None  # the engine's result (ids, log-probs) on the final event
    scored: tuple = ()  # the tokens behind this piece, with log-probs (RowUpdate.scored; opts.top_logprobs)


@dataclass
class Row:
    prompt: str
    options: GenerationOptions  # validated by the caller (a dict of option names is turned into one)
    prompt_tokens: int
    emit: Callable[[RowEvent], None]
    cancelled: bool = False  # set by the caller when the client went away: the row is dropped
    submitted: float = field(default_factory=time.perf_counter)
    prompt_ids: list[int] | None = None  # the prompt's tokens when the caller has them (else encoded here)

    def __post_init__(self) -> None:
        if not isinstance(self.options, GenerationOptions):
            self.options = GenerationOptions.from_kwargs(**self.options)

    @property
    def max_new_tokens(self) -> int:
        return self.options.max_new_tokens

    @property
    def sequences(self) -> int:
        """Sequences this row decodes: its beams in beam search, else one."""
        return self.options.num_beams

    def group_key(self) -> GenerationOptions:
        """The options a batch shares: all but max_new_tokens and stop strings (kept per row)."""
        # max_new_tokens stands in as min_new_tokens (at least 1): a valid GenerationOptions, the same key for
        # rows that differ in their length only.
        return replace(self.options, max_new_tokens=max(1, self.options.min_new_tokens), stop=())


def plan_batches(rows: list[Row], max_batch_size: int, block_size: int) -> list[list[Row]]:
    """Rows cut into batches of one option group each, at most max_batch_size sequences (a lone row always
    fits), fitting the context."""
    groups: dict[GenerationOptions, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.group_key(), []).append(r)
    batches: list[list[Row]] = []
    for members in groups.values():
        open_batches: list[list[Row]] = []
        for r in members:
            for b in open_batches:
                longest = max(r.prompt_tokens, *(x.prompt_tokens for x in b))
                most = max(r.max_new_tokens, *(x.max_new_tokens for x in b))
                if (len(b) + 1) * r.sequences <= max_batch_size and longest + most <= block_size:
                    b.append(r)
                    break
            else:
                open_batches.append([r])
        batches += open_batches
    return batches


def run_batch(model: Any, tokenizer: Any, rows: list[Row], stats: BatchStats | None = None) -> None:
    """Decode rows as one batch through the engine, emitting every row's pieces and its final event; a
    cancelled row gets no more events. `stats` counts the decode steps run and the rows cancelled.
    Rows with the same prompt (a request's n choices) share one prefill."""
    opts = replace(rows[0].options, stop=(), max_new_tokens=max(r.max_new_tokens for r in rows))
    stop_ids = stop_token_ids(tokenizer, opts)
    prompt_ids = [r.prompt_ids if r.prompt_ids is not None else tokenizer.encode(r.prompt) for r in rows]
    decoders = [RowDecoder(tokenizer, stop_ids, r.options.stop, r.max_new_tokens, len(x))
                for r, x in zip(rows, prompt_ids)]  # fmt: skip
    stats = stats if stats is not None else BatchStats()

    def step() -> None:
        stats.decode_steps += 1

    updates = decode_prompts(model, tokenizer, prompt_ids, opts, decoders,
                             is_cancelled=lambda i: rows[i].cancelled, on_step=step)  # fmt: skip
    for u in updates:
        c = u.done
        if c is not None and c.finish_reason == "cancelled":
            stats.cancelled_rows += 1
            continue
        if u.piece or u.scored:
            rows[u.row].emit(RowEvent(piece=u.piece, scored=u.scored))
        if c is not None:
            rows[u.row].emit(RowEvent(done=True, finish_reason=c.finish_reason,
                                      completion_tokens=c.completion_tokens, completion=c))  # fmt: skip


@dataclass
class BatchStats:
    batches: int = 0
    rows: int = 0
    largest_batch: int = 0
    busy_seconds: float = 0.0
    decode_steps: int = 0  # engine steps run (a beam-search step counts once)
    cancelled_rows: int = 0  # rows whose client went away, dropped while waiting or stopped while decoding

    def to_dict(self) -> dict[str, Any]:
        mean = self.rows / self.batches if self.batches else 0.0
        return {
            "batches": self.batches,
            "rows": self.rows,
            "mean_batch_size": round(mean, 2),
            "largest_batch": self.largest_batch,
            "busy_seconds": round(self.busy_seconds, 3),
            "decode_steps": self.decode_steps,
            "cancelled_rows": self.cancelled_rows,
        }


class Batcher:
    """The worker thread and its queue. max_batch_size=1 serves rows one by one (the sequential baseline)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_batch_size: int = 32,
        max_wait_ms: float = 10.0,
        max_in_flight: int = 256,
    ) -> None:
        if max_batch_size < 1 or max_wait_ms < 0 or max_in_flight < 1:
            raise DanluError(
                f"bad batching settings: max_batch_size={max_batch_size} (>= 1), max_wait_ms={max_wait_ms} (>= 0), "
                f"max_in_flight={max_in_flight} (>= 1)"
            )
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_wait_ms, self.max_in_flight = max_batch_size, max_wait_ms, max_in_flight
        self._in_flight = 0  # rows submitted and not yet finished (waiting or decoding)
        self._lock = threading.Lock()
        self.block_size = model.config.block_size
        self.stats = BatchStats()
        self._queue: queue.Queue[Row] = queue.Queue()
        self._running = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="danlu-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        while True:  # whoever still waits gets an answer
            try:
                row = self._queue.get_nowait()
            except queue.Empty:
                break
            self._finished(1)
            row.emit(RowEvent(error=Overloaded("the server is shutting down")))

    @property
    def alive(self) -> bool:
        return self._running and self._thread is not None and self._thread.is_alive()

    def submit(self, rows: list[Row]) -> None:
        """Queue rows for decoding; Overloaded when the queue is full or the worker is not running."""
        if not self.alive:
            raise Overloaded("the batching worker is not running")
        with self._lock:
            if self._in_flight + len(rows) > self.max_in_flight:
                raise Overloaded(
                    f"{self._in_flight} rows are waiting or decoding and this request adds {len(rows)} "
                    f"(limit {self.max_in_flight})"
                )
            self._in_flight += len(rows)
        for r in rows:
            self._queue.put(r)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _finished(self, n: int) -> None:
        with self._lock:
            self._in_flight -= n

    def _gather(self) -> list[Row]:
        try:
            rows = [self._queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        deadline = time.perf_counter() + self.max_wait_ms / 1000
        while len(rows) < self.max_batch_size:
            # Whatever is already queued joins at once; then wait out the rest of the window for stragglers.
            timeout = deadline - time.perf_counter()
            try:
                rows.append(self._queue.get_nowait() if timeout <= 0 else self._queue.get(timeout=timeout))
            except queue.Empty:
                break
        live = [r for r in rows if not r.cancelled]
        self.stats.cancelled_rows += len(rows) - len(live)
        self._finished(len(rows) - len(live))
        return live

    def _loop(self) -> None:
        while self._running:
            rows = self._gather()
            for batch in plan_batches(rows, self.max_batch_size, self.block_size):
                self.stats.batches += 1
                self.stats.rows += len(batch)
                self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
                started = time.perf_counter()
                try:
                    run_batch(self.model, self.tokenizer, batch, self.stats)
                except Exception as e:  # a failed batch fails its rows, never the worker
                    for r in batch:
                        r.emit(RowEvent(error=e))
                finally:
                    self._finished(len(batch))
                self.stats.busy_seconds += time.perf_counter() - started
