"""`danlu pretrain`: causal-LM pretraining from the command line (also under `torchrun`)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

# What a training command writes into --out: its presence means a run is there (`check_out`).
RUN_OUTPUTS = ("checkpoint", ".checkpoint.old", "metrics.jsonl")


def add_overwrite_arg(p: argparse.ArgumentParser) -> None:
    """`--overwrite`, for every command that writes a run into --out (checked by `check_out`)."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in OUT (without it, an OUT holding a run is refused)",
    )


def check_out(args: argparse.Namespace, outputs: Sequence[str] = RUN_OUTPUTS) -> None:
    """Refuse to write over an earlier run in `args.out` unless --resume or --overwrite says what to do with it.

    `outputs` are the names the command writes into OUT; with --overwrite they are removed first, so the
    folder holds one run and a later --resume can never pick up the replaced run's checkpoint."""
    from danlu.errors import DanluError

    resume, overwrite = getattr(args, "resume", False), getattr(args, "overwrite", False)
    if resume and overwrite:
        raise DanluError(
            "--resume continues the run in --out and --overwrite replaces it: give one, not both"
        )
    out = Path(args.out)
    found = [name for name in outputs if (out / name).exists()]
    if resume or not found:
        return
    if not overwrite:
        again = "pass --resume to continue it, " if hasattr(args, "resume") else ""
        raise DanluError(
            f"{out} already holds a run ({', '.join(found)}); {again}pass --overwrite to replace it, "
            "or choose another --out"
        )
    for name in found:
        path = out / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def resume_command(argv: Sequence[str]) -> str:
    """The command line that continues an interrupted run: this one, with --resume instead of --overwrite."""
    prog = "danlu" if os.path.basename(sys.argv[0]) == "danlu" else f"{shlex.quote(sys.executable)} -m danlu"
    args = [a for a in argv if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return f"{prog} {shlex.join(args)}"


def interrupted_message(error: KeyboardInterrupt, args: argparse.Namespace, argv: Sequence[str]) -> str:
    """What the CLI prints on Ctrl-C: where the checkpoint is and, when the command can resume, how."""
    text = str(error) or "interrupted"
    # sft resumes full fine-tuning only (its adapters and prompt encoders keep no optimizer state)
    resumable = (
        hasattr(args, "resume") and not getattr(args, "lora", False) and not getattr(args, "ptuning", 0)
    )
    if getattr(error, "checkpoint", None) is not None and resumable:
        text += f"\nresume with: {resume_command(argv)}"
    return text


def add_train_args(p: argparse.ArgumentParser, **defaults) -> None:
    """The TrainConfig fields as --flags (shared by pretrain and the later stages); `defaults` are this
    command's own (e.g. SFT's shorter run). `--device` and `--threads` come from `danlu.flags.heavy`."""
    from danlu.flags import add_dataclass_flags
    from danlu.train.config import TrainConfig

    add_dataclass_flags(p, TrainConfig, skip=("device",), defaults=defaults)  # help: the fields' metadata


def train_config_from_args(args: argparse.Namespace):
    from danlu.train.config import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names}, show_progress=not args.quiet)


def check_paths(*paths: str, what: str = "file or folder") -> None:
    """A DanluError for the first path that does not exist (before any loading)."""
    from pathlib import Path

    from danlu.errors import DanluError

    for path in paths:
        if not Path(path).exists():
            raise DanluError(f"no such {what}: {path}")


def check_preset(name: str, family: str = "gpt") -> None:
    """An unknown model preset, named with the valid ones, before any data is read."""
    import importlib

    from danlu.errors import DanluError

    presets = importlib.import_module(f"danlu.models.{family}").PRESETS
    if name not in presets:
        raise DanluError(f"unknown model preset {name!r}; choose one of {', '.join(sorted(presets))}")


def check_pretrain_args(args: argparse.Namespace) -> None:
    check_preset(args.preset)
    train_config_from_args(args)
    check_paths(args.tokenizer, what="tokenizer")
    from danlu.data.corpus import parse_data_specs

    # `a=0.7 b=0.3` names weighted sources: check their paths (and the weights) without the "=w" part
    check_paths(
        *(path for paths, _ in parse_data_specs(args.data) for path in paths), what="data file or folder"
    )


def register(sub) -> None:
    from danlu.flags import heavy

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
    add_overwrite_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_train_args(p)
    heavy(p, run_pretrain, validate=check_pretrain_args)


def run_pretrain(args: argparse.Namespace) -> int:
    from danlu.tokenizers.base import Tokenizer
    from danlu.train.loop import DistInfo
    from danlu.train.pretrain import pretrain

    check_out(args)
    tokenizer = Tokenizer.load(args.tokenizer)
    result = pretrain(
        args.data, tokenizer, args.out, args.preset, train_config_from_args(args), resume=args.resume
    )
    if DistInfo().is_main:
        print(json.dumps(result.summary, indent=2))
        print(f"checkpoint: {result.checkpoint}")
    return 0
