"""Corpus sources for `danlu data prepare` / `clean`: find the files, read them as a stream of raw records.

Reading is split in two so that parsing runs in the worker processes, not in the one that reads:
`iter_batches` (main process) reads bytes and cuts them into `RawBatch`es of whole documents, each with the
position just after every document (for resuming); `parse_batch` (any process) turns a batch into strings.

    .jsonl      one document per line, in the `text` field (or `field=`)
    .txt        the whole file is one document (`txt_docs="file"`), or documents separated by blank lines
                (`txt_docs="blank"`, read line by line: a huge .txt file streams)
    .parquet    the string column `text` (or `field=`), read in record batches (pyarrow)
    folders     every .txt / .jsonl / .parquet file inside, recursively, sorted by path; globs (`data/*.jsonl`)
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from danlu.errors import DanluError
from danlu.fileio import decode_utf8, json_object

SUFFIXES = (".txt", ".jsonl", ".parquet")
MAX_TXT_DOCUMENT = 256 * 2**20  # a whole-file .txt document beyond this is refused: it cannot stream
BATCH_BYTES = 1 << 20  # raw bytes per batch handed to a worker


@dataclass
class RawBatch:
    """Consecutive documents of one file, not parsed yet. ends[i] = (byte offset or row, line) after record i."""

    kind: str  # "jsonl" | "text"
    path: str
    file_index: int
    field: str
    split: str  # "auto" | "train" | "val"
    records: list = field(default_factory=list)  # bytes (jsonl, text) or str (parquet)
    ends: list = field(default_factory=list)  # [(offset, line)]
    first_line: int = 1
    first_offset: int = 0  # byte offset of the first record (row for parquet)


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """The files named by `inputs` (files, folders, globs), in a stable order, without repeats."""
    files: list[Path] = []
    for item in inputs:
        text = str(item)
        if any(ch in text for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            if not matches:
                raise DanluError(f"the pattern {text!r} matches no file; check the path")
            files.extend(m for m in matches if m.is_file() and m.suffix in SUFFIXES)
            continue
        path = Path(item)
        if not path.exists():
            raise DanluError(
                f"corpus not found: {path}; give .txt, .jsonl or .parquet files, folders or globs"
            )
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
            if not found:
                raise DanluError(f"corpus folder {path} has no .txt, .jsonl or .parquet files")
            files.extend(found)
        elif path.suffix not in SUFFIXES:
            raise DanluError(f"{path}: unsupported file type {path.suffix!r}; use .txt, .jsonl or .parquet")
        else:
            files.append(path)
    seen: set[Path] = set()
    out = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def iter_batches(
    files: list[Path],
    field: str = "text",
    txt_docs: str = "file",
    splits: list[str] | None = None,
    start: tuple[int, int, int] = (0, 0, 1),
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[RawBatch]:
    """Raw batches from `files`, starting at `start` = (file index, byte offset or row, line number)."""
    if txt_docs not in ("file", "blank"):
        raise DanluError(f"txt_docs must be 'file' or 'blank', got {txt_docs!r}")
    first_file, first_offset, first_line = start
    for index in range(first_file, len(files)):
        path = files[index]
        offset, line = (first_offset, first_line) if index == first_file else (0, 1)
        split = splits[index] if splits else "auto"
        if path.suffix == ".parquet":
            yield from _parquet_batches(path, index, field, split, offset, batch_bytes)
        elif path.suffix == ".jsonl" or txt_docs == "blank":
            yield from _line_batches(path, index, field, split, offset, line, batch_bytes, txt_docs)
        else:
            size = path.stat().st_size
            if offset >= size and size > 0:
                continue
            if size > MAX_TXT_DOCUMENT:
                raise DanluError(
                    f"{path} is {size / 2**20:.0f} MiB, too big to be one document; split it into documents "
                    "with blank lines and pass --txt-docs blank, or convert it to .jsonl"
                )
            b = RawBatch("text", str(path), index, field, split, first_line=1)
            b.records.append(path.read_bytes())
            b.ends.append((size, 1))
            yield b


def _line_batches(path, index, field, split, offset, line, batch_bytes, txt_docs) -> Iterator[RawBatch]:
    kind = "jsonl" if path.suffix == ".jsonl" else "text"
    with open(path, "rb") as f:
        f.seek(offset)
        batch = RawBatch(kind, str(path), index, field, split, first_line=line, first_offset=offset)
        size = 0
        paragraph: list[bytes] = []
        for raw in f:
            offset += len(raw)
            line += 1
            if kind == "jsonl":
                batch.records.append(raw)
                batch.ends.append((offset, line))
                size += len(raw)
            elif raw.strip():
                paragraph.append(raw)
                continue
            elif paragraph:  # a blank line ends a paragraph document
                record = b"".join(paragraph)
                paragraph = []
                batch.records.append(record)
                batch.ends.append((offset, line))
                size += len(record)
            if size >= batch_bytes:
                yield batch
                batch = RawBatch(kind, str(path), index, field, split, first_line=line, first_offset=offset)
                size = 0
        if paragraph:
            batch.records.append(b"".join(paragraph))
            batch.ends.append((offset, line))
        if batch.records:
            yield batch


def open_parquet(path: Path, field: str):
    """The pyarrow ParquetFile, checked to have the text column (so a bad file fails before any work)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DanluError(f"reading {path} needs pyarrow: pip install 'danlu[data]' (or pyarrow)") from e
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise DanluError(f"{path} is not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    if field not in names:
        raise DanluError(
            f"{path} has no column {field!r} (its columns: {', '.join(names)}); pass --field with the text column"
        )
    return pf


def _parquet_batches(path, index, field, split, first_row, batch_bytes) -> Iterator[RawBatch]:
    pf = open_parquet(path, field)
    row = 0
    for record_batch in pf.iter_batches(batch_size=4096, columns=[field]):
        column = record_batch.column(0)
        n = len(column)
        if row + n <= first_row:
            row += n
            continue
        values = column.to_pylist()
        batch = RawBatch("parquet", str(path), index, field, split, first_line=row + 1)
        for i, value in enumerate(values):
            r = row + i
            if r < first_row:
                continue
            if value is not None and not isinstance(value, str):
                raise DanluError(f"{path} row {r}: column {field!r} holds {type(value).__name__}, not text")
            batch.records.append(value or "")
            batch.ends.append((r + 1, r + 2))
        row += n
        if batch.records:
            yield batch


def parse_batch(batch: RawBatch) -> list[str]:
    """The documents' texts of a batch; DanluError names the file, line and field of a bad record."""
    if batch.kind == "parquet":
        return list(batch.records)
    texts = []
    for i, raw in enumerate(batch.records):
        line = batch.ends[i - 1][1] if i else batch.first_line
        start_offset = batch.ends[i - 1][0] if i else batch.first_offset
        if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw, start_offset = raw[3:], start_offset + 3
        text = decode_utf8(raw, Path(batch.path), start_offset, line)
        if batch.kind == "text":
            texts.append(text)
            continue
        if not text.strip():
            texts.append("")
            continue
        obj = json_object(text, f"{batch.path} line {line}")
        if batch.field not in obj:
            raise DanluError(
                f"{batch.path} line {line}: field {batch.field!r} is missing; pass --field with the text field"
            )
        value = obj[batch.field]
        if not isinstance(value, str):
            raise DanluError(
                f"{batch.path} line {line}: field {batch.field!r} must be a string, got {type(value).__name__}"
            )
        texts.append(value)
    return texts


def source_stats(files: list[Path]) -> list[dict]:
    """Path, size and modification time of each file (the index records them; the cache is keyed on them)."""
    out = []
    for f in files:
        st = f.stat()
        out.append({"path": str(f.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out
