"""File I/O every stage shares: atomic writes (a crash or Ctrl-C mid-write never leaves a half-written file or
checkpoint behind) and the one JSONL reader and writer.

`atomic_path(path)` yields a temporary name beside `path` for any writer (bytes, matplotlib's `savefig`, a
library's save); on success it is fsynced and renamed over `path`, on error removed. `atomic_write_bytes`,
`atomic_write_text` and `write_jsonl` go through it.

`iter_jsonl_lines(path)` yields (line number, object) for every non-blank line; a missing file, a byte that is not
UTF-8 (with its offset and the `iconv` command that converts the file), invalid JSON or a line that is not an
object is a `DanluError` naming the file and the line. `danlu.data.formats` adds the record schemas on top.

Files and folders are created with the modes a plain `open()` / `mkdir()` gives (0666 / 0777 less the umask,
so usually 0644 / 0755), not the 0600 / 0700 of `tempfile.mkstemp` / `mkdtemp`: a report or checkpoint
written here reads like any other output of the run.

`replace_dir(src, dst)` publishes a finished folder under a name that may already hold an older one. POSIX
cannot rename a folder over a non-empty one, so it takes two renames, ordered so that at every instant a
complete folder can be found: either `dst`, or (between the two renames only) `.{dst}.old`
(see `previous_dir`). docs/ARCHITECTURE.md ("Atomic checkpoints") walks through every state.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from danlu.errors import DanluError


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _temp_name(parent: Path, name: str) -> Path:
    return parent / f".{name}.{secrets.token_hex(4)}.tmp"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary file beside `path` to write by any means; on success fsync it and rename it over
    `path` (atomic on POSIX), on error remove it. The file starts empty with open()'s mode (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_name(path.parent, path.name)
        try:  # O_EXCL: a fresh file of our own; mode 0666 so the umask decides, as for open(path, "w")
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target (atomic on POSIX)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# ------------------------------------------------------------------------------------------------ JSONL
def not_utf8_error(path: Path, offset: int, byte: int, line: int | None = None) -> DanluError:
    """The error for a byte that is not UTF-8: where it is, and how to convert the file."""
    at = f"byte offset {offset}" + (f" (line {line})" if line is not None else "")
    return DanluError(
        f"{path} is not valid UTF-8: byte 0x{byte:02x} at {at} cannot be decoded. "
        f"Convert the file first, e.g. `iconv -f GBK -t UTF-8 {path} > {path}.utf8` "
        "(use its real encoding in place of GBK: latin1, cp1252, utf-16...)"
    )


def decode_utf8(data: bytes, path: Path, base_offset: int = 0, line: int | None = None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8_error(path, base_offset + e.start, data[e.start], line) from None


def short_json(value: Any) -> str:
    """A value as JSON, cut to 40 characters, for error messages."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def json_object(text: str, where: str) -> dict[str, Any]:
    """One JSONL line's object; a DanluError naming `where` (file and line) when it is not JSON or not an object.
    Every JSONL reader (this module's, the corpus streamer's `data.sources.parse_batch`) parses through it."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DanluError(
            f"{where}: invalid JSON ({e.msg} at column {e.colno}); each line must be one JSON object"
        ) from None
    if not isinstance(obj, dict):
        raise DanluError(f"{where}: expected a JSON object, got {type(obj).__name__} {short_json(obj)}")
    return obj


def iter_jsonl_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line of a JSONL file; a UTF-8 BOM is dropped."""
    path = Path(path)
    if not path.exists():
        raise DanluError(f"file not found: {path}; check the path")
    if path.is_dir():
        raise DanluError(f"{path} is a folder, expected a file")
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line_start, offset = offset, offset + len(raw)
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw, line_start = raw[3:], line_start + 3
            text = decode_utf8(raw, path, line_start, number).strip()
            if not text:
                continue
            yield number, json_object(text, f"{path} line {number}")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All objects of a JSONL file; an empty file is an error."""
    rows = [obj for _, obj in iter_jsonl_lines(path)]
    if not rows:
        raise DanluError(f"{path} has no records; expected one JSON object per line")
    return rows


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    """Write one JSON value per line, atomically: UTF-8 without escaping (中文 stays readable), no NaN (JSON has
    none; turn it into null first, as `danlu.eval.report.jsonable` does)."""
    text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
    atomic_write_text(path, text)
    return Path(path)


def make_temp_dir(parent: str | Path, name: str) -> Path:
    """A new, empty folder `.{name}.XXXXXXXX.tmp` in `parent`, with the umask's mode (mkdtemp would give 0700)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_name(parent, name)
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue


def previous_dir(path: str | Path) -> Path:
    """Where `replace_dir` keeps the folder it is replacing while it swaps (`.{name}.old` beside it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.old")


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only set it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_modes(path: str | Path) -> None:
    """Give every file under `path` the mode open() would have (0666 less the umask). Some writers, such as
    safetensors' `save_file`, create 0600 files, which would make a published checkpoint unreadable to others."""
    mode = 0o666 & ~_umask()
    for root, _dirs, files in os.walk(path):
        for name in files:
            os.chmod(os.path.join(root, name), mode)


def fsync_tree(path: str | Path) -> None:
    """fsync every file under `path`, then the folders, so a power cut after a rename finds the data on disk."""
    path = Path(path)
    for root, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def fsync_dir(path: str | Path) -> None:
    """fsync a folder (its entries: the renames done in it). Not every platform can open a folder; skip there."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_dir(src: str | Path, dst: str | Path, pause: object = None) -> None:
    """Move the complete folder `src` to `dst`, replacing what `dst` holds, so a kill at any moment leaves a
    complete folder at `dst` or, only between the two renames, at `previous_dir(dst)`.

    1. If `dst` exists, it is complete: clear any stale `.old` and rename `dst` -> `.old` (one atomic rename).
       If `dst` is missing and `.old` exists, an earlier swap was cut between its renames: `.old` is then the
       only complete copy and is left alone.
    2. Rename `src` -> `dst` (atomic; `dst` is now the new, complete folder).
    3. Delete `.old` (a kill while deleting leaves a partial `.old` next to a complete `dst`; step 1 of the next
       swap clears it).
    `pause(where)`, when given, is called between the steps (tests use it to stop a process there).
    """
    src, dst = Path(src), Path(dst)
    old = previous_dir(dst)
    if dst.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        fsync_dir(dst.parent)
        if pause is not None:
            pause("between_renames")  # type: ignore[operator]
    os.replace(src, dst)
    fsync_dir(dst.parent)
    if pause is not None:
        pause("after_publish")  # type: ignore[operator]
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces `path` whole, on error it is removed."""
    path = Path(path)
    tmp = make_temp_dir(path.parent, path.name)
    try:
        yield tmp
        default_modes(tmp)
        fsync_tree(tmp)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
