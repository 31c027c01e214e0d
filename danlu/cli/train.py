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
    register_plan(sub)


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


# ------------------------------------------------------------------------------------------- danlu plan
def register_plan(sub) -> None:
    from danlu.flags import heavy
    from danlu.train.plan import DEVICES

    p = sub.add_parser("plan", help="what a training run will cost: parameters, FLOPs, memory, time")
    p.add_argument(
        "--preset", default="llama-tiny", help="model preset (gpt2-tiny, llama-tiny, gpt2-small, ...)"
    )
    p.add_argument(
        "--model", help="a checkpoint folder whose config.json gives the shape (instead of --preset)"
    )
    p.add_argument("--vocab-size", type=int, help="tokenizer vocabulary size; none = the preset's")
    p.add_argument(
        "--batch-size", type=int, default=32, help="sequences per micro-batch, summed over all processes"
    )
    p.add_argument("--block-size", type=int, default=128, help="tokens per training sequence")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--max-steps", type=int, default=1000, help="optimizer steps to train")
    p.add_argument("--nproc", type=int, default=1, help="processes (devices) the run uses under torchrun")
    p.add_argument("--strategy", default="auto", choices=("auto", "single", "ddp", "fsdp"),
                   help="auto = DDP under torchrun, else one process; fsdp shards weights, gradients and "
                   "optimizer state across the torchrun processes (FSDP2)")  # fmt: skip
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False,
                   help="recompute each block's activations in the backward pass: less memory, about 1/3 "
                   "more compute")  # fmt: skip
    p.add_argument("--hardware", default="cpu", choices=("cpu", *DEVICES),
                   help="device the speed and memory figures are for; cpu is measured by a short calibration")  # fmt: skip
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed on a GPU (0-1]")
    p.add_argument(
        "--memory", type=float, help="GiB per device for the largest micro-batch; none = the device's"
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    heavy(p, run_plan, device=False, validate=check_plan_args)


def check_plan_args(args: argparse.Namespace) -> None:
    from danlu.errors import DanluError

    if args.model:
        check_paths(args.model, what="checkpoint")
    else:
        check_preset(args.preset)
    for name in ("batch_size", "block_size", "grad_accum", "max_steps", "nproc"):
        if getattr(args, name) <= 0:
            raise DanluError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 < args.mfu <= 1:
        raise DanluError(f"--mfu is a fraction of the peak in (0, 1], got {args.mfu}")
    if args.memory is not None and args.memory <= 0:
        raise DanluError(f"--memory is GiB per device and must be positive, got {args.memory}")


def run_plan(args: argparse.Namespace) -> int:
    from danlu.models.gpt import GPTConfig
    from danlu.train import plan as planner
    from danlu.train.distributed import resolve_strategy

    if args.model:
        from danlu.models.checkpoints import read_config
        from danlu.models.hf_gpt import config_from_hf

        hf = read_config(Path(args.model))
        block = hf.get("danlu", {})
        cfg = GPTConfig.from_dict(block["config"]) if block.get("family") == "gpt" else config_from_hf(hf)
        if args.vocab_size:
            cfg.vocab_size = args.vocab_size
    else:
        cfg = GPTConfig.from_name(args.preset, **({"vocab_size": args.vocab_size} if args.vocab_size else {}))
    strategy = resolve_strategy(args.strategy, args.nproc)
    kw = dict(world_size=args.nproc, strategy=strategy, gradient_checkpointing=args.gradient_checkpointing)
    plan = planner.plan_training(cfg, args.batch_size, args.block_size, grad_accum=args.grad_accum, **kw)
    if args.hardware == "cpu":
        flops_s = (
            planner.calibrate_cpu(cfg, max(1, args.batch_size // args.nproc), args.block_size) * args.nproc
        )
        where = "this CPU"
        device_memory = planner.available_memory()
    else:
        device = planner.DEVICES[args.hardware]
        flops_s = args.mfu * device["peak_flops"] * args.nproc
        where = f"{args.nproc}× {args.hardware}"
        device_memory = device["memory_gib"] * planner.GiB
    memory = args.memory * planner.GiB if args.memory else device_memory
    largest = planner.largest_micro_batch(cfg, args.block_size, memory, **kw)
    tok_s = planner.tokens_per_second(plan, flops_s)
    if args.json:
        result = {**plan.to_dict(), "strategy": strategy, "hardware": args.hardware, "flops_per_second": flops_s,
                  "tokens_per_second": tok_s, "seconds": plan.tokens_per_step * args.max_steps / tok_s,
                  "memory_bytes": memory, "largest_micro_batch": largest}  # fmt: skip
        print(json.dumps(result, indent=2))
    else:
        print(planner.describe(plan, tok_s, where, args.max_steps, largest, memory))
    return 0
