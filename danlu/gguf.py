"""Reading GGUF files (llama.cpp's single-file model format, version 2 and 3): metadata, tensors, and the ggml
block quantisations dequantised to float32. One reader for the whole package: the tokenizer side reads the
metadata (danlu/tokenizers/gguf.py), the model side maps the tensors onto danlu's GPT (danlu/models/gguf.py).

File layout (little-endian):
    "GGUF" magic | uint32 version | uint64 tensor count | uint64 metadata count
    metadata: (string key, uint32 value type, value)*      string = uint64 length + UTF-8 bytes
    tensor infos: (string name, uint32 n_dims, uint64 dims[n_dims], uint32 ggml type, uint64 offset)*
    padding to `general.alignment` (default 32), then the tensor data; each offset is relative to its start.
dims[0] is the fastest-varying axis, so a PyTorch (out, in) weight is stored with dims [in, out].

Quantised types cut a row into blocks that share a scale (and a minimum): Q8_0 (32 int8 and a fp16 scale),
Q4_0 (32 4-bit values, x = (q - 8)·d), Q4_1 (x = q·d + m), Q5_0 / Q5_1 (a fifth bit stored apart) and the
256-value "k-quant" super-blocks Q4_K, Q5_K, Q6_K with 6- or 8-bit sub-block scales.

`read_gguf(path).metadata` is the metadata dict (tokenizer.ggml.* included) the tokenizer side reads.
Only numpy is needed to parse; torch is imported when a tensor is asked for.

Why not the `gguf` package's `GGUFReader` (which danlu's exporter and tests use)? A GGUF file is untrusted input
(SECURITY.md) and that reader trusts its counts: it loops over what a header claims and keeps several numpy views
per string, so a 31 MB file holding one array of 4 M empty strings took it 6.3 GB and 350 s (this reader: 0.4 GB,
18 s, both measured under load on 2 CPUs, 2026-12-01); a claimed count is not checked against the bytes left, and
a bad file ends in a bare ValueError or IndexError. Bounding those needs the header walked first, which is this
reader; so it stays, and the tests compare its dequantisation with the gguf package's.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from danlu.errors import DanluError

if TYPE_CHECKING:
    import torch

GGUF_MAGIC = b"GGUF"

# Metadata value types: struct format of the scalar ones.
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_NUMPY = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "<u1",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_STRING, _ARRAY = 8, 9

# Bounds on what a header may claim, checked before anything is allocated (a GGUF file is untrusted input):
MAX_ARRAY_DEPTH = 8  # arrays of arrays (real files nest at most once)
MAX_DIMS = 8  # dimensions of one tensor (ggml has 4)
MAX_ALIGNMENT = 1 << 16  # general.alignment (real files: 32); it must also be a power of two
# The fewest bytes an item can take in the file, so a count is checked against the bytes left before a loop
# over it runs: a string is at least its uint64 length, an array its type and count, a key-value pair a key,
# a type and a one-byte value, a tensor info a name, n_dims, type and offset.
_MIN_BYTES = {_STRING: 8, _ARRAY: 12}
_KV_MIN_BYTES, _TENSOR_MIN_BYTES = 8 + 4 + 1, 8 + 4 + 4 + 8

# ggml tensor types: name, values per block, bytes per block.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2),
}  # fmt: skip


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # PyTorch order (dims reversed)
    ggml_type: int
    offset: int  # absolute, in the file

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.ggml_type, (f"unknown type {self.ggml_type}",))[0]

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)  # (Python ints: a forged shape cannot overflow int64 silently)

    @property
    def n_bytes(self) -> int:
        _, block, size = GGML_TYPES[self.ggml_type]
        return self.n_elements // block * size


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor] = field(repr=False)
    _data: np.ndarray = field(repr=False)  # the whole file, memory-mapped

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of tensor `name` (uint8)."""
        t = self.tensors[name]
        return self._data[t.offset : t.offset + t.n_bytes]

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor `name` dequantised to float32, in PyTorch shape."""
        import torch

        if name not in self.tensors:
            raise DanluError(f"{self.path}: no tensor named {name!r} in this GGUF file")
        t = self.tensors[name]
        try:
            values = dequantize(self.raw(name), t.ggml_type)
        except DanluError as e:
            raise DanluError(f"{self.path}: tensor {name}: {e}") from e
        return torch.from_numpy(values.reshape(t.shape).copy())


class _Reader:
    """Sequential little-endian reads from a byte buffer, with a clear error at a truncated end."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise DanluError(
                f"{self.path} is truncated (the header ends at byte {len(self.buf)}); download it again"
            )
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        if self.pos + n > len(self.buf):
            raise DanluError(f"{self.path} is truncated inside a string; download it again")
        data = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return data.decode("utf-8", errors="replace")

    def count(self, n: int, min_bytes: int, what: str) -> int:
        """n items of at least min_bytes each must fit in the bytes left: checked before looping over them."""
        left = len(self.buf) - self.pos
        if n * min_bytes > left:
            raise DanluError(
                f"{self.path}: {what} claims {n} items but only {left} bytes are left in the file; "
                "the file is corrupt or truncated"
            )
        return n

    def value(self, vtype: int, key: str = "", depth: int = 0) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise DanluError(
                    f"{self.path}: metadata {key} nests arrays more than {MAX_ARRAY_DEPTH} deep; the file is corrupt"
                )
            item_type, n = self.unpack("<I"), self.unpack("<Q")
            if item_type not in _NUMPY and item_type not in _MIN_BYTES:
                raise DanluError(
                    f"{self.path}: metadata {key} is an array of unknown value type {item_type}; the file is corrupt"
                )
            item_bytes = (
                np.dtype(_NUMPY[item_type]).itemsize if item_type in _NUMPY else _MIN_BYTES[item_type]
            )
            self.count(n, item_bytes, f"metadata array {key}")
            if item_type in _NUMPY:  # a numeric array in one read (token types, scores)
                dt = np.dtype(_NUMPY[item_type])
                end = self.pos + n * dt.itemsize
                if end > len(self.buf):
                    raise DanluError(f"{self.path} is truncated inside an array; download it again")
                arr = np.frombuffer(self.buf[self.pos : end], dtype=dt)
                self.pos = end
                return [bool(x) for x in arr] if item_type == 7 else arr.tolist()
            return [self.value(item_type, key, depth + 1) for _ in range(n)]
        if vtype not in _SCALARS:
            raise DanluError(f"{self.path}: unknown GGUF metadata value type {vtype}; the file is corrupt")
        return self.unpack(_SCALARS[vtype])


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse the header of a GGUF file; tensor data stays memory-mapped until `GGUFFile.tensor(name)`."""
    path = Path(path)
    if not path.is_file():
        raise DanluError(f"GGUF file {path} does not exist")
    if path.stat().st_size < 24:  # (an empty file cannot even be memory-mapped)
        raise DanluError(f"{path} is not a GGUF file (only {path.stat().st_size} bytes); download it again")
    data = np.memmap(path, dtype=np.uint8, mode="r")
    r = _Reader(memoryview(data), path)
    if bytes(data[:4]) != GGUF_MAGIC:
        raise DanluError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')")
    r.pos = 4
    version = r.unpack("<I")
    if version not in (2, 3):
        raise DanluError(f"{path} is GGUF version {version}; danlu reads versions 2 and 3")
    n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
    r.count(n_kv, _KV_MIN_BYTES, "the metadata count")
    r.count(n_tensors, _TENSOR_MIN_BYTES, "the tensor count")
    metadata: dict[str, Any] = {"GGUF.version": version}
    for _ in range(n_kv):
        key = r.string()
        metadata[key] = r.value(r.unpack("<I"), key)
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.unpack("<I")
        if n_dims > MAX_DIMS:
            raise DanluError(
                f"{path}: tensor {name} has {n_dims} dimensions (at most {MAX_DIMS}); the file is corrupt"
            )
        dims = [r.unpack("<Q") for _ in range(n_dims)]
        infos.append((name, tuple(reversed(dims)), r.unpack("<I"), r.unpack("<Q")))
    alignment = metadata.get("general.alignment", 32)
    if (
        not isinstance(alignment, int)
        or isinstance(alignment, bool)
        or not 0 < alignment <= MAX_ALIGNMENT
        or alignment & (alignment - 1)
    ):
        raise DanluError(
            f"{path}: metadata general.alignment = {alignment!r} is not a power of two in [1, {MAX_ALIGNMENT}]; "
            "the file is corrupt"
        )
    start = (r.pos + alignment - 1) // alignment * alignment
    tensors = {name: GGUFTensor(name, shape, t, start + off) for name, shape, t, off in infos}
    for t in tensors.values():
        if t.type_name not in DEQUANTIZABLE_NAMES:
            continue  # a type danlu cannot read is named when the tensor is asked for (dequantize)
        block = GGML_TYPES[t.ggml_type][1]
        if t.shape and t.shape[-1] % block:  # a row is a whole number of quantisation blocks
            raise DanluError(
                f"{path}: tensor {t.name} of type {t.type_name} has rows of {t.shape[-1]} values, "
                f"not a multiple of its block of {block}; the file is corrupt"
            )
        if t.offset + t.n_bytes > len(data):
            raise DanluError(
                f"{path}: tensor {t.name} (shape {t.shape}, offset {t.offset - start}) runs past the end of "
                "the file; the file is truncated or corrupt: download it again"
            )
    return GGUFFile(path, version, metadata, tensors, data)


def gguf_metadata(path: str | Path) -> dict[str, Any]:
    """Just the metadata (general.*, <arch>.*, tokenizer.ggml.*, tokenizer.chat_template) of a GGUF file."""
    return read_gguf(path).metadata


# ------------------------------------------------------------------------------------------- dequantisation
def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The fp16 stored at byte `start` of every block -> (n_blocks, 1) float32."""
    return blocks[:, start : start + 2].copy().view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 16) bytes -> (n, 32) values: the low nibbles are elements 0..15, the high ones 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """(n, 4) bytes = one little-endian uint32 per block -> (n, 32) bits, bit j for element j."""
    bits = qh.copy().view("<u4")  # (n, 1)
    return ((bits >> np.arange(32, dtype=np.uint32)) & 1).astype(np.float32)


def _k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K: 12 bytes pack 8 six-bit scales and 8 six-bit minimums. -> two (n, 8) arrays."""
    s = s.astype(np.int32)
    lo_sc, lo_m = s[:, 0:4] & 63, s[:, 4:8] & 63
    hi_sc = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    hi_m = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return np.concatenate([lo_sc, hi_sc], 1).astype(np.float32), np.concatenate([lo_m, hi_m], 1).astype(
        np.float32
    )


def _q4_k(b: np.ndarray, fifth: bool) -> np.ndarray:
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, m = _k_scales(b[:, 4:16])
    qh = b[:, 16:48] if fifth else None
    qs = b[:, 48:176] if fifth else b[:, 16:144]
    out = np.empty((len(b), 256), dtype=np.float32)
    for i in range(4):  # 64 values per chunk: 32 low nibbles (sub-block 2i), 32 high ones (2i + 1)
        q = qs[:, 32 * i : 32 * i + 32]
        lo, hi = (q & 0x0F).astype(np.float32), (q >> 4).astype(np.float32)
        if qh is not None:
            lo += ((qh >> (2 * i)) & 1) * 16.0
            hi += ((qh >> (2 * i + 1)) & 1) * 16.0
        out[:, 64 * i : 64 * i + 32] = d * sc[:, 2 * i : 2 * i + 1] * lo - dmin * m[:, 2 * i : 2 * i + 1]
        out[:, 64 * i + 32 : 64 * i + 64] = (
            d * sc[:, 2 * i + 1 : 2 * i + 2] * hi - dmin * m[:, 2 * i + 1 : 2 * i + 2]
        )
    return out


def _q6_k(b: np.ndarray) -> np.ndarray:
    ql, qh = b[:, 0:128], b[:, 128:192]
    sc = b[:, 192:208].copy().view(np.int8).astype(np.float32)  # (n, 16)
    d = _f16(b, 208)
    out = np.empty((len(b), 256), dtype=np.float32)
    for half in range(2):  # each half: 128 values from 64 ql bytes, 32 qh bytes and 8 scales
        l_, h_ = ql[:, 64 * half : 64 * half + 64], qh[:, 32 * half : 32 * half + 32]
        quarters = [
            (l_[:, :32] & 0x0F) | ((h_ & 3) << 4),
            (l_[:, 32:] & 0x0F) | (((h_ >> 2) & 3) << 4),
            (l_[:, :32] >> 4) | (((h_ >> 4) & 3) << 4),
            (l_[:, 32:] >> 4) | (((h_ >> 6) & 3) << 4),
        ]
        for k, q in enumerate(quarters):
            q = q.astype(np.float32) - 32.0  # (n, 32); each 16 values have their own scale
            s = np.repeat(sc[:, 8 * half + 2 * k : 8 * half + 2 * k + 2], 16, axis=1)
            out[:, 128 * half + 32 * k : 128 * half + 32 * k + 32] = d * s * q
    return out


def dequantize(raw: np.ndarray, ggml_type: int) -> np.ndarray:
    """Stored bytes (uint8) of a tensor of `ggml_type` -> its float32 values, flat."""
    if ggml_type not in GGML_TYPES:
        raise DanluError(f"unknown GGML tensor type {ggml_type}; the file is corrupt or newer than danlu")
    name, block, size = GGML_TYPES[ggml_type]
    raw = np.asarray(raw, dtype=np.uint8)
    if name == "F32":
        return raw.view("<f4").astype(np.float32)
    if name == "F16":
        return raw.view("<f2").astype(np.float32)
    if name == "BF16":  # the top 16 bits of a float32
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    if name == "F64":
        return raw.view("<f8").astype(np.float32)
    if name not in DEQUANTIZABLE:
        raise DanluError(
            f"GGML quantisation type {name} is not supported; danlu dequantises {', '.join(DEQUANTIZABLE_NAMES)}. "
            "Re-quantise the model to one of those (llama.cpp's llama-quantize) or use its float16 GGUF"
        )
    b = raw.reshape(-1, size)
    if name == "Q8_0":
        out = _f16(b, 0) * b[:, 2:34].copy().view(np.int8).astype(np.float32)
    elif name == "Q4_0":
        out = _f16(b, 0) * (_nibbles(b[:, 2:18]) - 8.0)
    elif name == "Q4_1":
        out = _f16(b, 0) * _nibbles(b[:, 4:20]) + _f16(b, 2)
    elif name == "Q5_0":
        out = _f16(b, 0) * (_nibbles(b[:, 6:22]) + 16.0 * _fifth_bits(b[:, 2:6]) - 16.0)
    elif name == "Q5_1":
        out = _f16(b, 0) * (_nibbles(b[:, 8:24]) + 16.0 * _fifth_bits(b[:, 4:8])) + _f16(b, 2)
    elif name in ("Q4_K", "Q5_K"):
        out = _q4_k(b, fifth=name == "Q5_K")
    else:  # Q6_K
        out = _q6_k(b)
    return out.reshape(-1)


DEQUANTIZABLE = {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"}
DEQUANTIZABLE_NAMES = [
    "F32",
    "F16",
    "BF16",
    "F64",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q4_K",
    "Q5_K",
    "Q6_K",
]
