"""What `danlu pretrain --data ...` trains on: token shards read through memory maps, whatever was given.

    --data prepared/                     a folder from `danlu data prepare` (index.json + shards)
    --data world/                        a world folder (pretrain_train.jsonl, pretrain_val.jsonl)
    --data a.txt b.jsonl c.parquet       plain files (5% of documents, by hash, held out for validation)
    --data web=0.7 books/=0.3            a mixture: each source with its weight (any of the kinds above)

A world folder or plain files are prepared on the fly into a cache folder (`$DANLU_CACHE_DIR`, default
`~/.cache/danlu/shards/<key>`), keyed by the source files' paths, sizes and modification times, the tokenizer's
hash and the settings: unchanged sources are tokenized once, and every later run or resume just maps the shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from danlu.data.datasets import Mixture
from danlu.data.prepare import PrepareOptions, prepare
from danlu.data.shards import INDEX, TokenStream, check_tokenizer, read_index, tokenizer_hash
from danlu.data.sources import expand_inputs, source_stats
from danlu.errors import DanluError

PLAIN_VAL_FRACTION = 0.05


def cache_root() -> Path:
    return Path(os.environ.get("DANLU_CACHE_DIR") or Path.home() / ".cache" / "danlu") / "shards"


def parse_data_specs(items: list[str | Path]) -> list[tuple[list[str], float | None]]:
    """`--data` values as (paths, weight) sources: "a=0.7" is weighted, plain paths form one unweighted source."""
    weighted, plain = [], []
    for item in items:
        text = str(item)
        name, sep, weight = text.rpartition("=")
        if sep and name and not Path(text).exists():
            try:
                w = float(weight)
            except ValueError:
                raise DanluError(f"--data {text!r}: the weight after '=' must be a number") from None
            if not (w > 0 and w != float("inf")):
                raise DanluError(f"--data {text!r}: mixture weight {w} must be a positive number")
            weighted.append(([name], w))
        else:
            plain.append(text)
    if weighted and plain:
        raise DanluError(
            f"--data mixes weighted sources and unweighted ones ({', '.join(plain)}); give every source a weight"
        )
    return weighted or [(plain, None)]


def load_token_splits(
    data: str | Path | list[str | Path], tokenizer: Any, block_size: int, show_progress: bool = False
) -> dict[str, Any]:
    """{"train": tokens, "val": tokens} (TokenStreams or a Mixture) for sample_blocks."""
    items = data if isinstance(data, list) else [data]
    specs = parse_data_specs(items)
    splits = [_source_splits(paths, tokenizer, show_progress) for paths, _ in specs]
    for (paths, _), s in zip(specs, splits):
        if s["train"].numel() <= block_size:  # a tiny corpus whose documents went to val: use them all
            s["train"] = s["val"] = TokenStream(s["train"].folder, ("train", "val"))
        if s["val"].numel() <= block_size:  # too little held out: validate on the training text
            s["val"] = s["train"]
        if s["train"].numel() <= block_size:
            raise DanluError(
                f"{' '.join(paths)}: the train split has {s['train'].numel()} tokens, not more than "
                f"block_size={block_size}; add text or lower --block-size"
            )
    if len(specs) == 1:
        return splits[0]
    names = [" ".join(p) for p, _ in specs]
    weights = [w for _, w in specs]
    return {k: Mixture([s[k] for s in splits], weights, names) for k in ("train", "val")}


def _source_splits(paths: list[str], tokenizer: Any, show_progress: bool) -> dict[str, TokenStream]:
    first = Path(paths[0])
    if len(paths) == 1 and first.is_dir() and (first / INDEX).is_file():
        check_tokenizer(read_index(first), tokenizer, first)
        return {s: TokenStream(first, s) for s in ("train", "val")}
    for p in paths:
        if Path(p).is_dir() and (Path(p) / INDEX).is_file():
            raise DanluError(f"{p} is a prepared folder: pass it alone, or as a weighted source (`{p}=1`)")
    if len(paths) == 1 and first.is_dir() and (first / "progress.json").is_file():
        raise DanluError(
            f"{first} holds an unfinished `danlu data prepare`; rerun it with the same arguments to finish it"
        )
    if len(paths) == 1 and first.is_dir() and not (first / "pretrain_train.jsonl").is_file():
        raise DanluError(
            f"{first} is a folder without index.json or pretrain_train.jsonl; pass a prepared folder "
            "(`danlu data prepare`), a world folder (`danlu world --out DIR`) or text files"
        )
    if len(paths) == 1 and first.is_dir():  # a world folder: its own validation file
        val = first / "pretrain_val.jsonl"
        folder = cached_prepare(
            [first / "pretrain_train.jsonl"], [val] if val.is_file() else [], tokenizer, show_progress
        )
    else:
        folder = cached_prepare(paths, [], tokenizer, show_progress)
    return {s: TokenStream(folder, s) for s in ("train", "val")}


def cached_prepare(inputs: list, val_inputs: list, tokenizer: Any, show_progress: bool = False) -> Path:
    """The cache folder holding `inputs` prepared with `tokenizer`; prepared now if absent or stale."""
    files, val_files = expand_inputs(inputs), expand_inputs(val_inputs) if val_inputs else []
    key_data = {
        "train": source_stats(files),
        "val": source_stats(val_files),
        "tokenizer": tokenizer_hash(tokenizer),
        "val_fraction": PLAIN_VAL_FRACTION,
    }
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:24]
    folder = cache_root() / key
    if (folder / INDEX).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{key}.", suffix=".tmp"))
    try:
        opts = PrepareOptions(val_fraction=PLAIN_VAL_FRACTION, show_progress=show_progress)
        prepare(files, tokenizer, tmp, opts, val_inputs=val_files or None)
        with contextlib.suppress(OSError):  # another process finished first: keep its copy (same bytes)
            os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
