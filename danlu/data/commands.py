"""`danlu world`: write the embedded bilingual world's data files and print what was written."""

from __future__ import annotations

import argparse
import json

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


def _size(value: str) -> str | int:
    return int(value) if value.strip().isdigit() else value


def run_world(args: argparse.Namespace) -> int:
    from danlu.data.world import write_world
    from danlu.data.world_universe import resolve_size

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
