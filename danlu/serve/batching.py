"""Batching: concurrent requests share the model's forwards instead of waiting for each other. Two schedulers:

- "continuous" (the default): iteration-level scheduling (Orca, Yu et al. 2022; vLLM). The worker keeps a
  `danlu.generate.continuous.SlotBatch` of `max_batch_size` slots; before every engine step finished rows have
  left, cancelled ones are dropped and waiting rows join while a slot is free and the KV memory
  (`kv_cache_tokens`) has room (else they wait: admission control). A joining row's prompt is prefilled in
  chunks interleaved with the others' decoding; every row keeps its own options (seed, temperature, penalties,
  stop strings, length, grammar), so any mix of requests shares a step. A prefix cache (`prefix_cache_tokens`)
  reuses the keys and values of prompt prefixes already computed (a shared system prompt, a chat's earlier
  turns). Beam-search rows (num_beams > 1, `goes_static`) and models that are not a danlu GPT go the static
  way, run by the same worker between steps.
- "static": the worker takes the first waiting row, waits up to `max_wait_ms` for more, then runs them as one
  left-padded batch through the engine (`danlu.generate.engine.decode_prompts`) to the end; requests that
  arrive meanwhile wait for the next batch. The baseline benchmarks/serve_load.py compares with.

Either way each row gets its text pieces as soon as they are safe to show (streaming requests forward them as
server-sent events; non-streaming ones just collect them), and its finish reason and token count.

The static scheduler:

Rows are grouped by their generation options (the request's own `GenerationOptions` object, hashable): a batch
shares one except `max_new_tokens`
(the batch runs to the largest; each row stops at its own) and `stop` strings (checked per row). A batch also
respects the context: its longest prompt plus its largest max_new_tokens must fit `block_size`, and holds at most
`max_batch_size` sequences, a beam-search row counting as its num_beams.

Work for a client that went away stops: the caller sets `Row.cancelled`; a waiting row is dropped, a decoding
row ends at the next step, and a batch whose rows are all cancelled stops decoding (beam search included,
through the engine's `should_stop` hook). At most `max_in_flight` rows wait or decode at once (503 beyond),
under either scheduler.

A row is one completion: a request with n choices, or several prompts, submits several rows. Each row reports
through its `emit` callback, called on the worker thread: `RowEvent(piece=...)` for text, then exactly one
final `RowEvent(done=True, finish_reason="stop"|"length", completion_tokens=..., completion=...)` or
`RowEvent(error=...)`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from danlu.errors import DanluError
from danlu.generate.continuous import SlotBatch
from danlu.generate.engine import Completion, GenerationOptions, RowDecoder, decode_prompts, stop_token_ids
from danlu.generate.prefix_cache import PrefixCache
from danlu.serve.config import SCHEDULERS


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
    """What the worker did. A static batch is a group of rows decoded together to the end; under the
    continuous scheduler a batch is one engine step (`continuous_steps` of them), its size the rows in the
    slot batch during that step (`slot_rows` sums them), so mean_batch_size is the mean slot occupancy."""

    scheduler: str = "static"
    batches: int = 0
    rows: int = 0
    largest_batch: int = 0
    busy_seconds: float = 0.0
    decode_steps: int = 0  # engine steps run (a beam-search step counts once)
    cancelled_rows: int = 0  # rows whose client went away, dropped while waiting or stopped while decoding
    continuous_steps: int = 0  # steps of the slot batch
    slot_rows: int = 0  # rows in the slot batch, summed over its steps
    waited_for_room: int = 0  # times the first waiting row found no slot or KV room and waited
    prefix_cache: PrefixCache | None = None  # its hit figures, under the continuous scheduler

    def to_dict(self) -> dict[str, Any]:
        if self.continuous_steps:
            mean = self.slot_rows / self.continuous_steps
        else:
            mean = self.rows / self.batches if self.batches else 0.0
        pc = self.prefix_cache.to_dict() if self.prefix_cache is not None else PrefixCache(0).to_dict()
        return {
            "scheduler": self.scheduler,
            "batches": self.batches,
            "rows": self.rows,
            "mean_batch_size": round(mean, 2),
            "largest_batch": self.largest_batch,
            "busy_seconds": round(self.busy_seconds, 3),
            "decode_steps": self.decode_steps,
            "cancelled_rows": self.cancelled_rows,
            "waited_for_room": self.waited_for_room,
            "prefix_cache": pc,
        }


def goes_static(opts: GenerationOptions) -> bool:
    """Rows the continuous scheduler hands to a static batch: beam search (its beams are reordered every step,
    not slot rows) and speculative decoding (an n-gram draft verifies several tokens a step)."""
    return opts.num_beams > 1 or opts.draft != "none"


class Batcher:
    """The worker thread and its queue. max_batch_size=1 serves rows one by one (the sequential baseline).

    scheduler "continuous" (rows join and leave between engine steps) or "static" (a batch runs to its end);
    see the module docstring. Under "continuous": kv_cache_tokens bounds the KV cache (slots x length;
    None: max_batch_size x the context), prefill_chunk the prompt tokens prefilled per step, and
    prefix_cache_tokens the prompt-prefix cache (0: none). max_wait_ms applies to the static scheduler only
    (a continuous one starts a lone request at once: whoever comes next joins at the next step)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_batch_size: int = 32,
        max_wait_ms: float = 10.0,
        max_in_flight: int = 256,
        scheduler: str = "continuous",
        kv_cache_tokens: int | None = None,
        prefill_chunk: int = 256,
        prefix_cache_tokens: int = 0,
    ) -> None:
        if max_batch_size < 1 or max_wait_ms < 0 or max_in_flight < 1:
            raise DanluError(
                f"bad batching settings: max_batch_size={max_batch_size} (>= 1), max_wait_ms={max_wait_ms} (>= 0), "
                f"max_in_flight={max_in_flight} (>= 1)"
            )
        if scheduler not in SCHEDULERS:
            raise DanluError(f"unknown scheduler {scheduler!r}; use one of {list(SCHEDULERS)}")
        if (
            prefill_chunk < 1
            or prefix_cache_tokens < 0
            or (kv_cache_tokens is not None and kv_cache_tokens < 1)
        ):
            raise DanluError(
                f"bad batching settings: prefill_chunk={prefill_chunk} (>= 1), prefix_cache_tokens="
                f"{prefix_cache_tokens} (>= 0), kv_cache_tokens={kv_cache_tokens} (>= 1)"
            )
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_wait_ms, self.max_in_flight = max_batch_size, max_wait_ms, max_in_flight
        from danlu.models.gpt import GPT

        # Slot rows need a forward that writes the cache by per-row position: a danlu GPT's.
        self.scheduler = scheduler if isinstance(model, GPT) else "static"
        self.kv_cache_tokens, self.prefill_chunk = kv_cache_tokens, prefill_chunk
        self.prefix_cache = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens else None
        self._in_flight = 0  # rows submitted and not yet finished (waiting or decoding)
        self._lock = threading.Lock()
        self.block_size = model.config.block_size
        self.stats = BatchStats(scheduler=self.scheduler, prefix_cache=self.prefix_cache)
        self._queue: queue.Queue[Row] = queue.Queue()
        self._running = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        loop = self._loop_continuous if self.scheduler == "continuous" else self._loop
        self._thread = threading.Thread(target=loop, name="danlu-batcher", daemon=True)
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
                    f"(limit {self.max_in_flight}, max_rows_in_flight)"
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

    def _run_static(self, rows: list[Row]) -> None:
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

    def _loop(self) -> None:
        while self._running:
            self._run_static(self._gather())

    # ---- the continuous scheduler ------------------------------------------------------------------------
    def _loop_continuous(self) -> None:
        slots = SlotBatch(self.model, self.tokenizer, self.max_batch_size, self.kv_cache_tokens,
                          self.prefill_chunk, self.prefix_cache)  # fmt: skip
        owners: dict[int, Row] = {}  # slot -> the row decoding in it
        waiting: deque[Row] = deque()
        try:
            while self._running:
                self._take(waiting, block=not owners and not waiting)
                beams = [r for r in waiting if goes_static(r.options)]
                if beams:  # beam search is not a slot row: a static batch, between two steps
                    for r in beams:
                        waiting.remove(r)
                    self._run_static([r for r in beams if not self._dropped(r)])
                for slot, r in list(owners.items()):
                    if r.cancelled:
                        slots.remove(slot)
                        del owners[slot]
                        self._dropped(r)
                self._admit(slots, waiting, owners)
                if owners:
                    slots = self._step(slots, owners)
        finally:  # stopped: whoever waits or decodes gets an answer
            for r in [*waiting, *owners.values()]:
                self._finished(1)
                r.emit(RowEvent(error=Overloaded("the server is shutting down")))

    def _take(self, waiting: deque[Row], block: bool) -> None:
        """Move queued rows to `waiting`; when idle, wait a little for the first."""
        try:
            if block:
                waiting.append(self._queue.get(timeout=0.1))
            while True:
                waiting.append(self._queue.get_nowait())
        except queue.Empty:
            pass

    def _dropped(self, r: Row) -> bool:
        """Whether the row's client went away (then counted and finished here)."""
        if r.cancelled:
            self.stats.cancelled_rows += 1
            self._finished(1)
        return r.cancelled

    def _admit(self, slots: SlotBatch, waiting: deque[Row], owners: dict[int, Row]) -> None:
        """Waiting rows join, first come first served, while a slot is free and the KV cache has room."""
        while waiting:
            r = waiting[0]
            if self._dropped(r):
                waiting.popleft()
                continue
            ids = r.prompt_ids if r.prompt_ids is not None else self.tokenizer.encode(r.prompt)
            r.prompt_ids = ids
            if not slots.can_admit(len(ids), r.max_new_tokens):
                self.stats.waited_for_room += 1
                return
            waiting.popleft()
            decoder = RowDecoder(self.tokenizer, stop_token_ids(self.tokenizer, r.options), r.options.stop,
                                 r.max_new_tokens, len(ids))  # fmt: skip
            try:
                owners[slots.add_row(ids, r.options, decoder)] = r
            except Exception as e:  # a bad row fails alone
                self._finished(1)
                r.emit(RowEvent(error=e))
                continue
            self.stats.rows += 1

    def _step(self, slots: SlotBatch, owners: dict[int, Row]) -> SlotBatch:
        """One engine step; each row's pieces and final events. A failed step fails its rows, never the worker
        (a fresh slot batch carries on)."""
        started = time.perf_counter()
        occupancy = len(owners)
        try:
            updates = slots.step()
        except Exception as e:
            for r in owners.values():
                r.emit(RowEvent(error=e))
            self._finished(len(owners))
            owners.clear()
            return SlotBatch(self.model, self.tokenizer, self.max_batch_size, self.kv_cache_tokens,
                             self.prefill_chunk, self.prefix_cache)  # fmt: skip
        st = self.stats
        st.batches += 1
        st.continuous_steps += 1
        st.decode_steps += 1
        st.slot_rows += occupancy
        st.largest_batch = max(st.largest_batch, occupancy)
        for u in updates:
            r = owners[u.row]
            if u.piece or u.scored:
                r.emit(RowEvent(piece=u.piece, scored=u.scored))
            c = u.done
            if c is not None:
                del owners[u.row]
                self._finished(1)
                n = c.completion_tokens
                r.emit(RowEvent(done=True, finish_reason=c.finish_reason, completion_tokens=n, completion=c))
        st.busy_seconds += time.perf_counter() - started
        return slots
