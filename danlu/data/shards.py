"""Token shards on disk: the file format, the index, and reading them back through memory maps.

A prepared folder holds `index.json` and shards `train_000000.bin`, `val_000000.bin`, ... Each shard is a
32-byte header then the token ids, little-endian uint16 (vocabulary <= 65536) or uint32, every document
followed by the tokenizer's end-of-text id (nanoGPT's uint16 .bin files, with a header that says what they are):

    bytes 0-7    b"DANLUTOK"
    bytes 8-11   format version (1), uint32
    bytes 12-15  bytes per token id (2 or 4), uint32
    bytes 16-23  number of tokens, uint64
    bytes 24-31  reserved (zero)

`index.json` names every shard with its token and document counts and a blake2b checksum, the tokenizer's hash,
and the source files with their sizes. `TokenStream` reads one split of one folder as a single sequence of
tokens without loading it: every shard is an `np.memmap`, and a block that spans two shards is stitched.
Opening checks sizes (a truncated shard is named with the offset where its data ends), checksums and the token
id range in one streaming pass (plain reads, so the pages never count toward the process's resident memory).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from danlu.errors import DanluError

MAGIC = b"DANLUTOK"
VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")  # magic, version, itemsize, n_tokens
HEADER_BYTES = HEADER.size  # 32
INDEX = "index.json"
FORMAT = "danlu-token-shards"
DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of the tokenizer's canonical tokenizer.json: equal hashes, equal token ids for every text."""
    data = json.dumps(tokenizer.to_hf_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8")).hexdigest()[:32]


def choose_dtype(vocab_size: int, requested: str = "auto") -> np.dtype:
    if requested not in ("auto", "uint16", "uint32"):
        raise DanluError(f"--dtype must be auto, uint16 or uint32, got {requested!r}")
    if requested == "uint16" and vocab_size > 65536:
        raise DanluError(
            f"the tokenizer's vocabulary has {vocab_size:,} tokens, too many for uint16 ids (at most 65,536); "
            "use --dtype uint32 or auto"
        )
    if requested == "uint32" or (requested == "auto" and vocab_size > 65536):
        return DTYPES[4]
    return DTYPES[2]


def header_bytes(itemsize: int, n_tokens: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, itemsize, n_tokens)


def file_checksum(path: Path, start: int = HEADER_BYTES, chunk: int = 1 << 22) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        f.seek(start)
        while data := f.read(chunk):
            h.update(data)
    return h.hexdigest()


def read_index(folder: str | Path) -> dict:
    """index.json of a prepared folder, checked for the fields the readers use."""
    path = Path(folder) / INDEX
    if not path.is_file():
        raise DanluError(f"{folder} holds no {INDEX}: it is not a prepared folder (`danlu data prepare`)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DanluError(f"{path} is not valid JSON ({e}); prepare the folder again") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DanluError(f"{path} is not a danlu token-shard index (format {FORMAT!r} expected)")
    if index.get("version") != VERSION:
        raise DanluError(f"{path} has version {index.get('version')!r}; this danlu reads version {VERSION}")
    for key in ("tokenizer", "splits", "itemsize"):
        if key not in index:
            raise DanluError(f"{path} lacks the field {key!r}; prepare the folder again")
    if index["itemsize"] not in DTYPES:
        raise DanluError(f"{path}: itemsize must be 2 or 4, got {index['itemsize']!r}")
    return index


def check_tokenizer(index: dict, tokenizer: Any, where: str | Path) -> None:
    """Refuse shards written by another tokenizer: their ids mean other tokens."""
    want = tokenizer_hash(tokenizer)
    have = index["tokenizer"].get("hash")
    if have != want:
        raise DanluError(
            f"{where} was prepared with another tokenizer (hash {have}, this one is {want}); "
            "prepare it again with this tokenizer (`danlu data prepare --tokenizer ...`) or use the matching one"
        )


class TokenStream:
    """One split of a prepared folder as one long sequence of token ids, memory-mapped shard by shard."""

    def __init__(
        self, folder: str | Path, split: str | tuple[str, ...] = "train", verify: bool = True
    ) -> None:
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        self.split = split
        names = (split,) if isinstance(split, str) else split
        entries = [e for name in names for e in self.index["splits"].get(name, [])]
        self.dtype = DTYPES[self.index["itemsize"]]
        vocab_size = int(self.index["tokenizer"].get("vocab_size", 1 << 32))
        self.maps: list[np.memmap] = []
        offsets = [0]
        for entry in entries:
            path = self.folder / entry["name"]
            n = _check_shard(path, entry, self.dtype, vocab_size, verify)
            if n:
                self.maps.append(np.memmap(path, dtype=self.dtype, mode="r", offset=HEADER_BYTES, shape=(n,)))
                offsets.append(offsets[-1] + n)
        self.offsets = np.array(offsets, dtype=np.int64)  # offsets[i] = first token of shard i

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def numel(self) -> int:
        return self.n_tokens

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as an int64 array, across shard boundaries."""
        if start < 0 or start + length > self.n_tokens:
            raise IndexError(f"tokens [{start}, {start + length}) outside [0, {self.n_tokens})")
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        parts = []
        while length > 0:
            local = start - int(self.offsets[i])
            take = min(length, len(self.maps[i]) - local)
            parts.append(np.asarray(self.maps[i][local : local + take], dtype=np.int64))
            start, length, i = start + take, length - take, i + 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _check_shard(path: Path, entry: dict, dtype: np.dtype, vocab_size: int, verify: bool) -> int:
    if not path.is_file():
        raise DanluError(f"shard {path} listed in {INDEX} is missing; prepare the folder again")
    n = int(entry["tokens"])
    expected = HEADER_BYTES + n * dtype.itemsize
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or head[:8] != MAGIC:
        raise DanluError(f"shard {path} is corrupt: no danlu token-shard header at byte offset 0")
    _, version, itemsize, count = HEADER.unpack(head)
    if version != VERSION or itemsize != dtype.itemsize or count != n:
        raise DanluError(
            f"shard {path} is corrupt: its header (version {version}, {itemsize}-byte ids, {count} tokens) does "
            f"not match {INDEX} ({dtype.itemsize}-byte ids, {n} tokens)"
        )
    if size < expected:
        raise DanluError(
            f"shard {path} is truncated: it should be {expected:,} bytes, its data ends at byte offset {size:,} "
            f"(token {(size - HEADER_BYTES) // dtype.itemsize:,} of {n:,}); prepare the folder again"
        )
    if size > expected:
        raise DanluError(f"shard {path} has {size - expected:,} bytes past its last token; prepare it again")
    if verify:
        _verify_contents(path, entry, dtype, vocab_size)
    return n


def _verify_contents(path: Path, entry: dict, dtype: np.dtype, vocab_size: int) -> None:
    h = hashlib.blake2b(digest_size=16)
    chunk_tokens = 1 << 21
    offset = HEADER_BYTES
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        while data := f.read(chunk_tokens * dtype.itemsize):
            h.update(data)
            ids = np.frombuffer(data, dtype=dtype)
            bad = np.flatnonzero(ids >= vocab_size)
            if bad.size:
                at = offset + int(bad[0]) * dtype.itemsize
                raise DanluError(
                    f"shard {path} is corrupt: token id {int(ids[bad[0]])} at byte offset {at:,} is outside the "
                    f"vocabulary (size {vocab_size:,}); prepare the folder again"
                )
            offset += len(data)
    if entry.get("blake2b") and h.hexdigest() != entry["blake2b"]:
        raise DanluError(
            f"shard {path} is corrupt: its contents do not match the checksum in {INDEX}; prepare it again"
        )
