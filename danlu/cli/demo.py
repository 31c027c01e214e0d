"""`danlu demo`: the flags and the command; the stages and the report are the recipe danlu/recipes/demo.py."""

from __future__ import annotations

import argparse

from danlu.errors import DanluError
from danlu.recipes.demo import (
    DEFAULT_STAGES,
    DEMO_OUTPUTS,
    PRETRAIN_ALIGN,
    PRETRAIN_DEFAULT,
    PRETRAIN_STEPS,
    PRETRAIN_STEPS_ALIGN,
    STAGE_GROUPS,
    pretrain_schedule,
    resolve_stages,
    run_demo,
)


def run(args: argparse.Namespace) -> int:
    """Refuse an --out holding another run (unless --overwrite / --resume), then run the stages."""
    from danlu.cli.train import check_out

    check_out(args, DEMO_OUTPUTS)
    return run_demo(args)


def register(sub) -> None:
    from danlu.flags import heavy

    p = sub.add_parser(
        "demo", help="the whole life of a model on the embedded world (report.md, metrics.json)"
    )
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted demo in OUT after its last finished stage",
    )
    from danlu.cli.train import add_overwrite_arg

    add_overwrite_arg(p)
    p.add_argument(
        "--stages",
        nargs="+",
        default=None,
        metavar="STAGE",
        help=f"stages or groups, space-separated ({', '.join(STAGE_GROUPS)}); none: {' '.join(DEFAULT_STAGES)}",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the world and of every stage")
    p.add_argument("--size", default="small", help="world size: tiny, small, medium, large or a multiplier")
    p.add_argument("--preset", default="llama-tiny", help="GPT preset of the pretrained model")
    p.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size")
    p.add_argument(
        "--pretrain-steps",
        dest="steps",
        type=int,
        default=None,
        help=f"pretraining steps (none: {PRETRAIN_STEPS}; {PRETRAIN_STEPS_ALIGN} when alignment stages run)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="pretraining sequences per step")
    p.add_argument("--block-size", type=int, default=128, help="pretraining tokens per sequence")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"pretraining peak learning rate (none: {PRETRAIN_DEFAULT.lr:g}; {PRETRAIN_ALIGN.lr:g} when alignment "
        "stages run)",
    )
    p.add_argument(
        "--min-lr",
        type=float,
        default=None,
        help="pretraining learning rate at the end of the cosine decay (none: lr × "
        f"{PRETRAIN_DEFAULT.final_lr_ratio:g}; lr × {PRETRAIN_ALIGN.final_lr_ratio:g} when alignment stages run)",
    )
    p.add_argument("--samples", type=int, default=6, help="generations shown at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage headings")
    p.add_argument(
        "--lab-full",
        action="store_true",
        help="lab stages: run(out_dir, quick=False) scripts at their full size",
    )
    from danlu.recipes.align_stages import add_demo_args

    add_demo_args(p)
    heavy(p, run, validate=check_demo_args)


def check_demo_args(args: argparse.Namespace) -> None:
    """Every flag checked before the world is written (a typo must not cost a stage)."""
    from danlu.cli.train import check_preset
    from danlu.data.world.universe import resolve_size

    schedule = pretrain_schedule(resolve_stages(args.stages))
    check_preset(args.preset)
    resolve_size(args.size)
    for name in ("vocab_size", "batch_size", "block_size", "samples"):
        if getattr(args, name) < 1:
            raise DanluError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if (args.steps is not None and args.steps < 1) or (args.lr is not None and not args.lr > 0):
        raise DanluError(f"--pretrain-steps must be >= 1 and --lr > 0, got {args.steps}, {args.lr}")
    lr = schedule.lr if args.lr is None else args.lr
    if args.min_lr is not None and not 0 <= args.min_lr <= lr:
        raise DanluError(f"--min-lr must be in [0, --lr {lr:g}], got {args.min_lr}")
