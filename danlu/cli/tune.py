"""`danlu sft`: supervised fine-tuning from the command line (full, `--lora`, or `--ptuning N`); `danlu merge-lora`.

danlu sft --model runs/demo/pretrain/checkpoint --data runs/demo/world --out runs/sft
danlu sft --model CKPT --data my_sft.jsonl --out runs/sft-lora --lora --lora-r 8 --lora-targets q v
danlu merge-lora --model CKPT --adapter runs/sft-lora/adapter --out runs/sft-lora/merged
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from danlu.errors import DanluError


def read_records(paths: list[str], kind: str, world_file: str) -> list[dict]:
    """Records of `kind` from JSONL files, or from `world_file` inside a world folder (`danlu world`)."""
    from danlu.data.formats import read_jsonl
    from danlu.errors import DanluError

    records: list[dict] = []
    for p in map(Path, paths):
        if p.is_dir():
            if not (p / world_file).is_file():
                raise DanluError(
                    f"{p} is a folder without {world_file}; pass a world folder or {kind} JSONL files"
                )
            p = p / world_file
        records += read_jsonl(p, kind)
    return records


def add_lora_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", action="store_true", help="train LoRA adapters only (saved in PEFT's layout)")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank r")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha; scaling = alpha / r")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the LoRA input, in [0, 1)")
    p.add_argument(
        "--lora-targets",
        nargs="+",
        default=["q", "v"],
        metavar="LAYER",
        help="layers to adapt, space-separated (q k v o gate up down, or full names such as blocks.29.mlp.up)",
    )
    p.add_argument(
        "--quantize-base",
        type=int,
        choices=(4, 8),
        default=None,
        help="QLoRA: hold the frozen base in 4-bit NF4 or int8 while training (with --lora; default: off)",
    )


def add_merge_arg(p: argparse.ArgumentParser) -> None:
    """`--merge`: with --lora, also write the merged model (without it the adapter is the result, as in PEFT)."""
    p.add_argument("--merge", action="store_true",
                   help="with --lora: also write the merged model to OUT/merged, in the base's dtype")  # fmt: skip


def check_merge_arg(args: argparse.Namespace) -> None:
    if getattr(args, "merge", False) and not getattr(args, "lora", False):
        raise DanluError(
            "--merge folds LoRA adapters into the model; add --lora (full fine-tuning saves it whole)"
        )


def save_merged(model, tokenizer, args: argparse.Namespace) -> Path:
    """The LoRA-merged `model` saved to OUT/merged in the base's own dtype, as `danlu merge-lora` saves it."""
    from danlu.models.checkpoints import save_model
    from danlu.tune.merge import base_dtype

    return save_model(model.to(base_dtype(args.model)), Path(args.out) / "merged", tokenizer=tokenizer)


def print_lora_result(args: argparse.Namespace) -> None:
    """Where a LoRA run's result is: the adapter and how to merge it, or the merged model with --merge."""
    out = Path(args.out)
    print(f"adapter: {out / 'adapter'}")
    if args.merge:
        print(f"merged: {out / 'merged'}")
    else:  # the adapter is the result, as with PEFT; merging is one command
        print(f"merge it with: danlu merge-lora --model {args.model} --adapter {out / 'adapter'} --out {out / 'merged'}")  # fmt: skip


def lora_from_args(args: argparse.Namespace):
    if not args.lora:
        if getattr(args, "quantize_base", None) is not None:
            raise DanluError("--quantize-base: QLoRA trains LoRA adapters on the quantised base; add --lora")
        return None
    from danlu.flags import split_list
    from danlu.tune.lora import LoRAConfig

    return LoRAConfig(
        r=args.lora_r,
        alpha=args.lora_alpha,
        dropout=args.lora_dropout,
        targets=split_list(args.lora_targets, "--lora-targets"),
        quantize_base=getattr(args, "quantize_base", None),
    )


def check_sft_args(args: argparse.Namespace) -> None:
    """Every flag checked before the model is loaded."""
    from danlu.cli.train import check_paths, train_config_from_args
    from danlu.errors import DanluError

    train_config_from_args(args)
    lora_from_args(args)
    check_merge_arg(args)
    if args.ptuning < 0:
        raise DanluError(f"--ptuning takes a number of virtual tokens >= 0, got {args.ptuning}")
    check_paths(args.model, what="model")
    check_paths(*args.data, *(args.val_data or []), what="data file or folder")


def register(sub) -> None:
    from danlu.cli.train import add_overwrite_arg, add_train_args
    from danlu.flags import heavy

    p = sub.add_parser(
        "sft", help="supervised fine-tuning on instruction / chat records (loss on replies only)"
    )
    p.add_argument("--model", required=True, help="checkpoint to start from (e.g. the pretrained model)")
    p.add_argument(
        "--data", required=True, nargs="+", help="a world folder (sft_train.jsonl) or SFT .jsonl files"
    )
    p.add_argument(
        "--eval-data",
        dest="val_data",
        nargs="+",
        default=None,
        help="validation SFT files (none: 5%% of --data)",
    )
    p.add_argument(
        "--out", required=True, help="output folder: metrics.jsonl, loss.png, checkpoint/, adapter/"
    )
    p.add_argument("--packing", action="store_true", help="pack several examples into each block")
    p.add_argument("--ptuning", type=int, default=0, metavar="N", help="train N P-tuning virtual tokens only")
    p.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoint (full fine-tuning only)"
    )
    add_overwrite_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_lora_args(p)
    add_merge_arg(p)
    add_train_args(p, max_steps=300, batch_size=32, block_size=128, lr=5e-4, warmup_steps=15, eval_interval=75,
                   eval_batches=4, weight_decay=0.0)  # fmt: skip
    heavy(p, run_sft, validate=check_sft_args)

    m = sub.add_parser(
        "merge-lora", help="fold a LoRA adapter into its base model and save the merged checkpoint"
    )
    m.add_argument(
        "--model", required=True, help="the base the adapter was trained on (folder or .gguf file)"
    )
    m.add_argument("--adapter", required=True, help="the adapter folder (adapter_config.json, PEFT layout)")
    m.add_argument("--out", required=True, help="folder for the merged checkpoint")
    m.add_argument("--dtype", choices=("f32", "bf16", "f16"), default=None,
                   help="dtype of the saved weights (default: the base's own)")  # fmt: skip
    heavy(m, run_merge_lora, device=False)


def run_merge_lora(args: argparse.Namespace) -> int:
    from danlu.tune.merge import merge_lora

    out, dtype = merge_lora(args.model, args.adapter, args.out, args.dtype)
    print(f"merged checkpoint ({str(dtype).removeprefix('torch.')}): {out}")
    return 0


def run_sft(args: argparse.Namespace) -> int:
    import danlu
    from danlu.cli.train import RUN_OUTPUTS, check_out, train_config_from_args
    from danlu.errors import DanluError
    from danlu.tune.sft import sft

    lora = lora_from_args(args)  # flags first: a bad combination fails before anything is loaded
    config = train_config_from_args(args)
    check_out(args, (*RUN_OUTPUTS, "adapter", "prompt_encoder", "merged"))
    model, tokenizer = danlu.load(args.model)
    if tokenizer is None:
        raise DanluError(f"{args.model} has no tokenizer.json; SFT needs the model's tokenizer beside it")
    records = read_records(args.data, "sft", "sft_train.jsonl")
    val = read_records(args.val_data, "sft", "sft_train.jsonl") if args.val_data else None
    ptuning = None
    if args.ptuning:
        from danlu.tune.ptuning import PTuningConfig

        ptuning = PTuningConfig(n_virtual=args.ptuning)
    model.train()
    save_dtype = None
    if lora is not None and args.merge:
        from danlu.tune.merge import base_dtype

        save_dtype = base_dtype(args.model)
    result = sft(model, tokenizer, records, args.out, config, val_records=val, lora=lora, ptuning=ptuning,
                 packing=args.packing, resume=args.resume, base_name=args.model, merge=args.merge,
                 save_dtype=save_dtype)  # fmt: skip
    test = [Path(d) / "sft_test.jsonl" for d in args.data if (Path(d) / "sft_test.jsonl").is_file()]
    if test:
        from danlu.data.formats import read_jsonl
        from danlu.tune.evaluate import evaluate_sft

        result.summary["heldout"] = evaluate_sft(result.model, tokenizer, read_jsonl(test[0], "sft"))[
            "exact_match"
        ]
    print(json.dumps(result.summary, indent=2, default=str))
    for name, path in [("checkpoint", result.checkpoint), *result.extras.items()]:
        if path is not None:
            print(f"{name}: {path}")
    if lora is not None and not args.merge:  # the adapter is the result, as with PEFT; merging is one command
        out = Path(args.out)
        print(
            f"merge it with: danlu merge-lora --model {args.model} --adapter {out / 'adapter'} --out {out / 'merged'}"
        )
    return 0
