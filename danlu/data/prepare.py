"""`danlu data prepare`: stream a corpus once through the tokenizer into token shards (see `shards.py`).

    prepare(["corpus/", "extra.parquet"], tokenizer, "prepared/", PrepareOptions(workers=2))

Streaming: the main process reads raw records in batches of ~1 MiB (`sources.iter_batches`), at most
`3 × workers` batches are in flight, and each worker parses and tokenizes its batch and sends back compact
arrays (numpy ids, lengths and split codes: a few pickled buffers, not lists of ints); the main process
only appends ids to the open shard of each split, in one write per split and batch unless a shard closes
inside the batch (`_append_whole`), so its share of the CPU stays small beside the workers'. Memory stays
bounded by the batch size, whatever the corpus size. `workers=1` tokenizes in-process.

Validation split: a document goes to `val` when the blake2b hash of its text falls in the first
`val_fraction` of the hash range: deterministic, independent of order and of the number of workers, and exact
duplicates always land on the same side (no train/val leakage of repeated documents).

Resume (write protocol). Shard boundaries depend only on the data: a split's shard closes after the first
document that brings it to `shard_tokens` tokens. Each split appends to `NAME.bin.partial`; closing a shard
fills its header, fsyncs and renames it to `NAME.bin`, fsyncs the other splits' partial files, then replaces
`progress.json` atomically: the committed shards, the byte length of each partial file, and the position in the
sources just after the closing document. A run that dies at any instant is resumed from the last progress.json:
uncommitted shards are renamed back or removed, partial files are cut to their committed length, reading
restarts at the recorded position; the result is byte-identical to an uninterrupted run. `index.json`
written last marks the folder complete.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from danlu.data.shards import (
    FORMAT,
    HEADER_BYTES,
    INDEX,
    VERSION,
    choose_dtype,
    file_checksum,
    header_bytes,
    read_index,
    tokenizer_hash,
)
from danlu.data.sources import RawBatch, expand_inputs, iter_batches, open_parquet, parse_batch, source_stats
from danlu.errors import DanluError
from danlu.fileio import atomic_write_text
from danlu.flags import option

PROGRESS = "progress.json"
SPLITS = ("train", "val")
SKIP = 255  # split code of an empty document (written nowhere)


@dataclass
class PrepareOptions:
    """How `prepare` reads and writes; the fields with help text are `danlu data prepare`'s flags."""

    field: str = option("text", "text field of .jsonl records / column of .parquet files")
    txt_docs: str = option(
        "file",
        "a .txt file is one document (file) or documents split at blank lines (blank)",
        choices=("file", "blank"),
    )
    # by hash of the document; ignored when val_inputs are given
    val_fraction: float = option(0.005, "share of documents held out for validation")
    # a shard closes at the first document end past this many tokens
    shard_tokens: int = option(1 << 24, "tokens per shard")
    dtype: str = option(
        "auto",
        "token-id type of the shards (auto: uint16 when the vocabulary fits)",
        choices=("auto", "uint16", "uint32"),
    )
    workers: int = option(1, "tokenizer processes (1: in this process)")
    show_progress: bool = option(True, cli=False)  # --quiet

    def check(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise DanluError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.shard_tokens < 1:
            raise DanluError(f"--shard-tokens must be positive, got {self.shard_tokens}")
        if not 1 <= self.workers <= 256:
            raise DanluError(f"--workers must be between 1 and 256, got {self.workers}")


# ---------------------------------------------------------------------------------------------------------
# Tokenizing a batch (runs in a worker process, or in-process with workers=1).

_TOKENIZER: Any = None


def _init_worker(tokenizer: Any) -> None:
    global _TOKENIZER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _TOKENIZER = tokenizer


def _val_split(text: str, val_fraction: float) -> bool:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=b"danlu-val").digest()
    return int.from_bytes(digest, "little") < val_fraction * 2.0**64


def encode_batch(batch: RawBatch, val_fraction: float, itemsize: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """(split code per document, tokens per document, all ids) of one batch; eos ends every document."""
    tok = _TOKENIZER
    eos = tok.eos_token_id
    codes, lengths, ids = bytearray(), [], []
    texts = list(parse_batch(batch))
    kept = [text for text in texts if text.strip()]
    # one encode_batch per batch: a Unigram tokenizer segments the batch's new words in one lattice
    docs = iter(tok.encode_batch(kept))
    for text in texts:
        if not text.strip():
            codes.append(SKIP)
            lengths.append(0)
            continue
        if batch.split == "auto":
            codes.append(1 if val_fraction and _val_split(text, val_fraction) else 0)
        else:
            codes.append(SPLITS.index(batch.split))
        doc = next(docs)
        doc.append(eos)
        lengths.append(len(doc))
        ids.extend(doc)
    dtype = np.uint16 if itemsize == 2 else np.uint32
    return bytes(codes), np.array(lengths, dtype=np.int64), np.array(ids, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------
# Writing shards.


class _SplitWriter:
    """The open partial shard of one split and the shards it has closed."""

    def __init__(self, folder: Path, split: str, itemsize: int, shards: list[dict], partial: dict | None):
        self.folder, self.split, self.itemsize = folder, split, itemsize
        self.shards = list(shards)
        self.tokens = partial["tokens"] if partial else 0
        self.documents = partial["documents"] if partial else 0
        for stale in folder.glob(f"{split}_*.bin*"):  # shards after the committed ones: redone from here
            number = stale.name[len(split) + 1 :].split(".")[0]
            if number.isdigit() and int(number) > len(self.shards):
                stale.unlink()
        path = self._path(partial=True)
        if partial and partial["bytes"] > HEADER_BYTES:
            final = self._path(partial=False)
            if not path.exists() and final.exists():  # killed between the rename and progress.json
                os.replace(final, path)
            if not path.exists() or path.stat().st_size < partial["bytes"]:
                raise DanluError(f"cannot resume: {path} is shorter than progress.json says; use --overwrite")
            self.file = open(path, "r+b", buffering=1 << 20)  # noqa: SIM115 - kept open across calls
            self.file.truncate(partial["bytes"])
            self.file.seek(partial["bytes"])
        else:
            self._path(partial=False).unlink(missing_ok=True)
            self.file = open(path, "wb", buffering=1 << 20)  # noqa: SIM115
            self.file.write(header_bytes(itemsize, 0))

    def _path(self, partial: bool) -> Path:
        name = f"{self.split}_{len(self.shards):06d}.bin"
        return self.folder / (name + ".partial" if partial else name)

    def append(self, ids: np.ndarray, documents: int = 1) -> None:
        self.file.write(ids.tobytes())
        self.tokens += len(ids)
        self.documents += documents

    def sync(self) -> dict:
        self.file.flush()
        os.fsync(self.file.fileno())
        nbytes = HEADER_BYTES + self.tokens * self.itemsize
        return {"bytes": nbytes, "tokens": self.tokens, "documents": self.documents}

    def close_shard(self) -> None:
        """Fill the header, make the shard durable and give it its final name; open the next one."""
        self.file.seek(0)
        self.file.write(header_bytes(self.itemsize, self.tokens))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        partial, final = self._path(partial=True), self._path(partial=False)
        os.replace(partial, final)
        self.shards.append(
            {
                "name": final.name,
                "tokens": self.tokens,
                "documents": self.documents,
                "blake2b": file_checksum(final),
            }
        )
        self.tokens = self.documents = 0
        self._path(partial=False).unlink(missing_ok=True)
        self.file = open(self._path(partial=True), "wb", buffering=1 << 20)  # noqa: SIM115
        self.file.write(header_bytes(self.itemsize, 0))

    def finish(self) -> None:
        if self.tokens:
            self.close_shard()
        self.file.close()
        self._path(partial=True).unlink(missing_ok=True)


def _test_hook(commit: int, stage: str) -> None:
    """DANLU_PREPARE_KILL=N:stage SIGKILLs this process at commit N ("renamed": after the shard's rename,
    before progress.json; "progress": just after it) so the resume tests hit the worst instants exactly."""
    spec = os.environ.get("DANLU_PREPARE_KILL")
    if spec and spec == f"{commit}:{stage}":
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------------------
# The driver.


def prepare(
    inputs: list[str | Path],
    tokenizer: Any,
    out: str | Path,
    options: PrepareOptions | None = None,
    val_inputs: list[str | Path] | None = None,
    overwrite: bool = False,
) -> dict:
    """Tokenize `inputs` into shards in `out`; returns the index (also written to out/index.json).

    With `val_inputs`, those files form the validation split and `inputs` all go to train.
    """
    opts = options or PrepareOptions()
    opts.check()
    out = Path(out)
    if tokenizer.eos_token_id is None:
        raise DanluError("the tokenizer has no end-of-text token to separate documents; add one and retry")
    itemsize = choose_dtype(tokenizer.vocab_size, opts.dtype).itemsize
    train_files = expand_inputs(inputs)
    val_files = expand_inputs(val_inputs) if val_inputs else []
    files = train_files + val_files
    splits = ["train" if val_files else "auto"] * len(train_files) + ["val"] * len(val_files)
    sources = [s | {"split": sp} for s, sp in zip(source_stats(files), splits)]
    tok_hash = tokenizer_hash(tokenizer)
    settings = {k: v for k, v in asdict(opts).items() if k not in ("workers", "show_progress")}
    settings["itemsize"] = itemsize
    if val_files:
        settings["val_fraction"] = 0.0
    key = hashlib.sha256(
        json.dumps({"sources": sources, "tokenizer": tok_hash, "settings": settings}, sort_keys=True).encode()
    ).hexdigest()[:32]

    for f in files:
        if f.suffix == ".parquet":
            open_parquet(f, opts.field)
    state = _start_state(out, key, tok_hash, overwrite)
    if state == "done":
        return read_index(out) | {"reused": True}
    out.mkdir(parents=True, exist_ok=True)
    if state:
        writers = {
            s: _SplitWriter(out, s, itemsize, state["shards"][s], state["partials"][s]) for s in SPLITS
        }
    else:
        for stale in list(out.glob("*.bin")) + list(out.glob("*.bin.partial")):
            stale.unlink()
        writers = {s: _SplitWriter(out, s, itemsize, [], None) for s in SPLITS}
    position = tuple(state["position"]) if state else (0, 0, 1)
    stats = dict(state["stats"]) if state else {"documents": 0, "empty_documents": 0}
    commits = state["commits"] if state else 0

    total_bytes = sum(s["bytes"] for s in sources)
    done_bytes = stats.get("bytes_done", 0)
    encoder = _Encoder(tokenizer, opts.workers, settings["val_fraction"], itemsize)
    bar = None
    if opts.show_progress:
        from tqdm import tqdm

        bar = tqdm(
            total=total_bytes, initial=done_bytes, unit="B", unit_scale=True, desc="prepare", smoothing=0.1
        )
    t0 = time.perf_counter()
    read_bytes = 0
    batches = iter_batches(files, opts.field, opts.txt_docs, splits, position)
    try:
        for batch, (codes, lengths, ids) in encoder.map(batches):
            split_codes = np.frombuffer(codes, dtype=np.uint8)
            if not _append_whole(split_codes, lengths, ids, writers, stats, opts.shard_tokens):
                cursor = 0
                for j, code in enumerate(codes):
                    n = int(lengths[j])
                    if code == SKIP:
                        stats["empty_documents"] += 1
                        continue
                    stats["documents"] += 1
                    writer = writers[SPLITS[code]]
                    writer.append(ids[cursor : cursor + n])
                    cursor += n
                    if writer.tokens >= opts.shard_tokens:
                        commits += 1
                        writer.close_shard()
                        _test_hook(commits, "renamed")
                        stats["bytes_done"] = done_bytes + _batch_bytes(batch, j + 1)
                        _write_progress(
                            out, key, tok_hash, writers, batch.file_index, batch.ends[j], stats, commits
                        )
                        _test_hook(commits, "progress")
            nbytes = _batch_bytes(batch, len(codes))
            done_bytes += nbytes
            read_bytes += nbytes
            if bar is not None:
                bar.update(nbytes)
    finally:
        encoder.close()
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    for writer in writers.values():
        writer.finish()
    if stats["documents"] == 0:
        raise DanluError(f"the corpus {', '.join(map(str, inputs))} has no non-empty documents to prepare")
    index = {
        "format": FORMAT,
        "version": VERSION,
        "key": key,
        "itemsize": itemsize,
        "dtype": "uint16" if itemsize == 2 else "uint32",
        "tokenizer": {
            "hash": tok_hash,
            "vocab_size": tokenizer.vocab_size,
            "eos_token_id": tokenizer.eos_token_id,
            "kind": getattr(tokenizer, "kind", ""),
        },
        "settings": settings,
        "sources": sources,
        "splits": {s: writers[s].shards for s in SPLITS},
        "totals": {
            s: {
                "tokens": sum(e["tokens"] for e in writers[s].shards),
                "documents": sum(e["documents"] for e in writers[s].shards),
            }
            for s in SPLITS
        },
        "empty_documents": stats["empty_documents"],
        "last_run": {"seconds": round(seconds, 3), "bytes": read_bytes, "workers": opts.workers},
    }
    atomic_write_text(out / INDEX, json.dumps(index, indent=1, ensure_ascii=False))
    (out / PROGRESS).unlink(missing_ok=True)
    return index


def _append_whole(
    codes: np.ndarray, lengths: np.ndarray, ids: np.ndarray, writers: dict, stats: dict, shard_tokens: int
) -> bool:
    """The fast path of the main process: when no shard of either split closes inside this batch, each split's
    documents are appended in one write (the same bytes, in the same order, as one write per document).
    False (nothing written) when a shard closes inside it: the caller then goes document by document, so
    the shard ends, and progress.json's position, fall exactly after the closing document."""
    per_token = np.repeat(codes, lengths)  # (n_ids,) the split code of every id
    kept = codes != SKIP
    totals = {s: int(lengths[codes == i].sum()) for i, s in enumerate(SPLITS)}
    if any(writers[s].tokens + totals[s] >= shard_tokens for s in SPLITS if totals[s]):
        return False
    for i, s in enumerate(SPLITS):
        if totals[s]:
            writers[s].append(ids[per_token == i], documents=int((codes == i).sum()))
    stats["documents"] += int(kept.sum())
    stats["empty_documents"] += int((~kept).sum())
    return True


def _batch_bytes(batch: RawBatch, n_records: int) -> int:
    """Bytes of the first records (characters for parquet text): what the progress bar and MB/s count."""
    return sum(len(r) for r in batch.records[:n_records])


class _Encoder:
    """Tokenizes batches in order: in-process (workers=1) or in a pool with a bounded number in flight."""

    def __init__(self, tokenizer: Any, workers: int, val_fraction: float, itemsize: int) -> None:
        self.args, self.workers, self.pool = (val_fraction, itemsize), workers, None
        if workers == 1:
            _init_worker_in_process(tokenizer)
            return
        import multiprocessing

        ctx = multiprocessing.get_context(
            "spawn"
        )  # no inherited threads or locks (tqdm, torch) in the workers
        self.pool = ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer,))
        self.pool.map(_ready, range(4 * workers), chunksize=1)  # started before the clock starts

    def map(self, batches):
        if self.pool is None:
            for batch in batches:
                yield batch, encode_batch(batch, *self.args)
            return
        pending: collections.deque = collections.deque()
        for batch in batches:
            pending.append((batch, self.pool.apply_async(encode_batch, (batch, *self.args))))
            if len(pending) >= 3 * self.workers:  # bounded: the reader never runs far ahead of the workers
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _ready(_: int) -> bool:
    return _TOKENIZER is not None


def _init_worker_in_process(tokenizer: Any) -> None:
    global _TOKENIZER
    _TOKENIZER = tokenizer


def _write_progress(out: Path, key, tok_hash, writers, file_index: int, end, stats, commits) -> None:
    state = {
        "key": key,
        "tokenizer_hash": tok_hash,
        "position": [file_index, end[0], end[1]],
        "shards": {s: w.shards for s, w in writers.items()},
        "partials": {s: w.sync() for s, w in writers.items()},
        "stats": stats,
        "commits": commits,
    }
    atomic_write_text(out / PROGRESS, json.dumps(state, indent=1))


def _start_state(out: Path, key: str, tok_hash: str, overwrite: bool) -> dict | str | None:
    """None: start afresh; "done": already prepared with these inputs; else the progress.json to resume."""
    progress, index_path = out / PROGRESS, out / INDEX
    if overwrite:
        progress.unlink(missing_ok=True)
        index_path.unlink(missing_ok=True)
        return None
    if index_path.is_file():
        index = read_index(out)
        if index.get("key") == key:
            return "done"
        if index["tokenizer"].get("hash") != tok_hash:
            raise DanluError(
                f"{out} holds shards of another tokenizer (hash {index['tokenizer'].get('hash')}, this one is "
                f"{tok_hash}); shards of two tokenizers cannot be mixed: use another --out, or --overwrite"
            )
        raise DanluError(
            f"{out} already holds shards prepared from other inputs or settings; use --overwrite"
        )
    if progress.is_file():
        try:
            state = json.loads(progress.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DanluError(f"{progress} is unreadable ({e}); rerun with --overwrite") from None
        if state.get("tokenizer_hash") != tok_hash:
            raise DanluError(
                f"{out} holds an interrupted prepare with another tokenizer (hash {state.get('tokenizer_hash')}, "
                f"this one is {tok_hash}); shards of two tokenizers cannot be mixed: use another --out or --overwrite"
            )
        if state.get("key") != key:
            raise DanluError(
                f"{out} holds an interrupted prepare of other inputs or settings; rerun those, or use --overwrite"
            )
        return state
    return None
