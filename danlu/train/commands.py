"""`danlu pretrain`: causal-LM pretraining from the command line (also under `torchrun`)."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields


def add_train_args(p: argparse.ArgumentParser, **defaults) -> None:
    """The TrainConfig fields as --flags (shared by pretrain and the later stages)."""
    from danlu.train.config import TrainConfig

    base = TrainConfig(**defaults) if defaults else TrainConfig()
    for f in fields(TrainConfig):
        if f.name == "show_progress":
            continue
        flag = "--" + f.name.replace("_", "-")
        value = getattr(base, f.name)
        if isinstance(value, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        elif f.name == "min_lr":
            p.add_argument(flag, type=float, default=None, help="default: lr / 10")
        else:
            p.add_argument(flag, type=type(value), default=value, help=f"default {value}")


def train_config_from_args(args: argparse.Namespace):
    from danlu.train.config import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names}, show_progress=not args.quiet)


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a GPT/LLaMA-style model on text (causal LM)")
    p.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="a folder of token shards (danlu data prepare), a world folder, .txt/.jsonl/.parquet files, "
        "or a weighted mixture: a=0.7 b=0.3",
    )
    p.add_argument(
        "--tokenizer", required=True, help="tokenizer folder or tokenizer.json (danlu tokenizer train)"
    )
    p.add_argument("--out", required=True, help="output folder: metrics.jsonl, loss.png, checkpoint/")
    p.add_argument(
        "--preset", default="llama-tiny", help="model preset (gpt2-tiny, llama-tiny, gpt2-small, ...)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoint exactly where it stopped"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_train_args(p)
    p.set_defaults(func=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> int:
    from danlu.tokenizers.base import Tokenizer
    from danlu.train.loop import DistInfo
    from danlu.train.pretrain import pretrain

    tokenizer = Tokenizer.load(args.tokenizer)
    result = pretrain(
        args.data, tokenizer, args.out, args.preset, train_config_from_args(args), resume=args.resume
    )
    if DistInfo().is_main:
        print(json.dumps(result.summary, indent=2))
        print(f"checkpoint: {result.checkpoint}")
    return 0
