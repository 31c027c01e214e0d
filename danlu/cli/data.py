"""`danlu world` (the embedded bilingual world's data files) and `danlu data prepare|clean` (real corpora)."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from danlu.errors import DanluError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "world",
        help="generate the embedded bilingual world (pretraining text, SFT, preference, seq2seq... as JSONL)",
        description="Write the invented English/Chinese world danlu trains on by default. "
        "The same --seed and --size always give byte-identical files.",
    )
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the world")
    p.add_argument(
        "--size",
        default="small",
        help="tiny, small (~1.5 MB of text), medium (~10 MB), large (~25 MB), or an int multiplier",
    )
    p.set_defaults(func=run_world)
    register_data(subparsers)


def _size(value: str) -> str | int:
    return int(value) if value.strip().isdigit() else value


def run_world(args: argparse.Namespace) -> int:
    from danlu.data.world import write_world
    from danlu.data.world.universe import resolve_size

    resolve_size(_size(args.size))  # a bad size fails before any file is written
    paths = write_world(args.out, seed=args.seed, size=_size(args.size))
    try:
        meta = json.loads(paths["world"].read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:  # pragma: no cover - we just wrote it
        raise DanluError(f"could not read back {paths['world']}: {e}") from e
    counts = meta["counts"]
    print(f"world seed={args.seed} size={args.size}: {len(paths)} files in {args.out}")
    width = max(len(p.name) for p in paths.values())
    for stem, path in paths.items():
        n_bytes = path.stat().st_size
        what = f"{counts[stem]:>8,} records" if stem in counts else f"{len(meta['vocabulary']):>8,} words"
        print(f"  {path.name:<{width}}  {what}  {n_bytes / 1e6:8.2f} MB")
    print(f"  held-out facts (never in training text): {meta['heldout_facts']}")
    return 0


def register_data(subparsers: argparse._SubParsersAction) -> None:
    """`danlu data prepare` (corpus -> token shards) and `danlu data clean` (normalise, dedup, filter)."""
    p = subparsers.add_parser(
        "data",
        help="prepare a corpus into token shards, or clean and deduplicate it",
        description="Corpus tools for pretraining at real sizes: `prepare` tokenizes text into memory-mappable "
        "shards (streaming, N processes, resumable); `clean` normalises, deduplicates and filters documents.",
    )
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    pr = sub.add_parser("prepare", help="tokenize .txt/.jsonl/.parquet files into token shards + index.json")
    pr.add_argument(
        "--input", required=True, nargs="+", help="files, folders or globs (.txt, .jsonl, .parquet)"
    )
    pr.add_argument("--tokenizer", required=True, help="tokenizer folder or tokenizer.json")
    pr.add_argument("--out", required=True, help="output folder: index.json and the shards")
    from danlu.data.prepare import PrepareOptions
    from danlu.flags import add_dataclass_flags

    add_dataclass_flags(pr, PrepareOptions)  # help and defaults: the fields'
    pr.add_argument("--overwrite", action="store_true", help="start afresh even if OUT holds other shards")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=run_prepare)
    cl = sub.add_parser(
        "clean", help="normalise, deduplicate (exact + MinHash near-dups) and filter documents"
    )
    from danlu.data.clean import add_clean_args

    add_clean_args(cl)
    cl.set_defaults(func=run_clean)


def run_prepare(args: argparse.Namespace) -> int:
    from danlu.data.prepare import PrepareOptions, prepare
    from danlu.tokenizers.base import Tokenizer

    tokenizer = Tokenizer.load(args.tokenizer)
    flagged = [f.name for f in fields(PrepareOptions) if f.metadata.get("cli") is not False]
    opts = PrepareOptions(**{n: getattr(args, n) for n in flagged}, show_progress=not args.quiet)
    index = prepare(args.input, tokenizer, args.out, opts, overwrite=args.overwrite)
    if index.get("reused"):
        print(f"{args.out} already holds these inputs prepared with this tokenizer: nothing to do")
    run = index["last_run"]
    mb_s = run["bytes"] / 1e6 / max(run["seconds"], 1e-9)
    for split, t in index["totals"].items():
        print(f"{split:5s} {t['documents']:>10,} documents {t['tokens']:>14,} tokens "
              f"in {len(index['splits'][split])} shards")  # fmt: skip
    print(f"{index['dtype']} ids; {index['empty_documents']:,} empty documents skipped; "
          f"{run['bytes'] / 1e6:.1f} MB read in {run['seconds']:.1f} s ({mb_s:.2f} MB/s, {run['workers']} workers)")  # fmt: skip
    print(f"index: {args.out}/index.json")
    return 0


def run_clean(args: argparse.Namespace) -> int:
    from danlu.data.clean import run_clean_command

    return run_clean_command(args)
