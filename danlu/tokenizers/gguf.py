"""GGUF metadata (the key-value header of a llama.cpp model file) and the tokenizer stored in it.

GGUF layout (version 2 and 3, little-endian): magic b"GGUF", uint32 version, uint64 tensor count,
uint64 key-value count, then key-value pairs: key = string (uint64 length + UTF-8 bytes), uint32 value
type, value. Value types: 0 uint8, 1 int8, 2 uint16, 3 int16, 4 uint32, 5 int32, 6 float32, 7 bool,
8 string, 9 array (uint32 element type, uint64 count, elements), 10 uint64, 11 int64, 12 float64.
The header is parsed by danlu/gguf.py (memory-mapped; tensors are not read); no `gguf` package is needed.

Tokenizer keys: tokenizer.ggml.model ("gpt2" = byte-level BPE, "bert" = WordPiece), .tokens, .merges
("left right" strings), .token_type (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte),
.bos/eos/unknown/padding_token_id, tokenizer.chat_template. Control tokens become special tokens,
user-defined ones non-special added tokens. A "gpt2" tokenizer pre-tokenizes with GPT-2's regex, as
`transformers` does when it converts a GGUF tokenizer (llama.cpp's `tokenizer.ggml.pre` names variants
of that regex, e.g. with digits split; for vocabularies without digit merges the result is the same).
"""

from __future__ import annotations

import os
from typing import Any

from danlu.errors import DanluError
from danlu.gguf import gguf_metadata
from danlu.tokenizers.base import Tokenizer


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """All key-value metadata of a GGUF file (version 2 or 3) as a dict; tensor data is not read."""
    return gguf_metadata(path)


def tokenizer_from_gguf(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer stored in a GGUF file's metadata."""
    meta = read_gguf_metadata(path)
    return tokenizer_from_gguf_metadata(meta, str(path))


def tokenizer_from_gguf_metadata(meta: dict[str, Any], source: str = "GGUF metadata") -> Tokenizer:
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if model is None or not isinstance(tokens, list):
        raise DanluError(f"{source} has no tokenizer (tokenizer.ggml.model / tokens missing)")
    if not all(isinstance(t, str) for t in tokens):
        raise DanluError(f"{source}: tokenizer.ggml.tokens should be an array of strings")
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if not isinstance(types, list) or len(types) != len(tokens):
        raise DanluError(
            f"{source}: tokenizer.ggml.token_type should be an array of {len(tokens)} integers, one per token"
        )
    merges_meta = meta.get("tokenizer.ggml.merges", [])
    if not isinstance(merges_meta, list) or not all(isinstance(m, str) and " " in m for m in merges_meta):
        raise DanluError(f"{source}: tokenizer.ggml.merges should be an array of 'left right' strings")

    def role(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    specials = {t: i for i, (t, k) in enumerate(zip(tokens, types)) if k == 3}
    user = {t: i for i, (t, k) in enumerate(zip(tokens, types)) if k == 4}
    template = meta.get("tokenizer.chat_template")
    if model == "gpt2":
        from danlu.tokenizers.bpe import BPETokenizer
        from danlu.tokenizers.pretokenize import PreTokenizer

        merges = [tuple(m.split(" ", 1)) for m in merges_meta]
        added = [
            {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False}
            | {"normalized": False, "special": t in specials}
            for t, i in sorted({**user, **specials}.items(), key=lambda kv: kv[1])
        ]
        pre = PreTokenizer(
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        )
        tok = BPETokenizer(
            {t: i for i, t in enumerate(tokens)},
            merges,
            specials,
            extra_tokens=user,
            pre_tokenizer=pre,
            added_tokens=added,
            eos_token=role("eos"),
            bos_token=role("bos"),
            pad_token=role("padding"),
            unk_token=role("unknown"),
            chat_template=template,
        )
        tok.add_bos_token = bool(meta.get("tokenizer.ggml.add_bos_token", False))
        return tok
    if model == "bert":
        from danlu.tokenizers.wordpiece import WordPieceTokenizer

        vocab = {t: i for i, t in enumerate(tokens)}
        return WordPieceTokenizer(
            vocab,
            specials,
            unk_token=role("unknown") or "[UNK]",
            cls_token=role("cls") or role("bos"),
            sep_token=role("seperator") or role("separator") or role("eos"),
            pad_token=role("padding"),
            mask_token=role("mask"),
            chat_template=template,
        )
    raise DanluError(
        f"{source} has tokenizer model {model!r}; danlu reads 'gpt2' (byte-level BPE) and 'bert'"
    )
