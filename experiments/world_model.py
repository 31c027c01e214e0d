"""A world-pretrained GPT for the experiments that study one model (decoding.py, inside.py).

`world_model(args)` returns (model, tokenizer, world_dir): the checkpoint given by --model, or one trained
here the way `danlu demo` trains its model (world, 2,048-token BPE, llama-tiny, 600 steps of 128-token blocks,
lr 2e-3; half its batch of 32); a checkpoint already in CACHE/pretrain/checkpoint from the same settings is
reused, so the second experiment run on the same --cache folder trains nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_model_args(ap: argparse.ArgumentParser, steps: int = 600) -> None:
    ap.add_argument(
        "--model", type=Path, help="a world-pretrained checkpoint (default: train one in --cache)"
    )
    ap.add_argument("--world", type=Path, help="the world folder (default: `danlu world` into --cache/world)")
    ap.add_argument("--cache", type=Path, default=Path("runs/lab"), help="where the trained model is kept")
    ap.add_argument("--pretrain-steps", type=int, default=steps, help="steps when a model is trained here")
    ap.add_argument("--batch-size", type=int, default=16, help="pretraining sequences per step")
    ap.add_argument("--block-size", type=int, default=128, help="pretraining tokens per sequence")
    ap.add_argument("--n-layer", type=int, default=4, help="layers of the model trained here (llama-tiny: 4)")
    ap.add_argument(
        "--n-embd", type=int, default=128, help="width of the model trained here (llama-tiny: 128)"
    )
    ap.add_argument("--size", default="small", help="world size when the world is written here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="PyTorch CPU threads (1: tiny models gain nothing from a second, and on a loaded machine a second costs 10x)",
    )


def world_model(args: argparse.Namespace) -> tuple[Any, Any, Path]:
    import torch

    import danlu
    from danlu.data.world import write_world

    torch.set_num_threads(args.threads)
    world = args.world
    if world is None:
        world = args.cache / "world"
        if not (world / "pretrain_val.jsonl").is_file():
            write_world(world, seed=args.seed, size=args.size)
    if args.model is not None:
        model, tokenizer = danlu.load(args.model)
        return model.eval(), tokenizer, world
    ckpt = args.cache / "pretrain" / "checkpoint"
    settings = {
        k: getattr(args, k)
        for k in ("pretrain_steps", "batch_size", "block_size", "n_layer", "n_embd", "size", "seed")
    }
    stamp = args.cache / "pretrain" / "settings.json"
    if ckpt.is_dir() and stamp.is_file() and json.loads(stamp.read_text()) == settings:
        print(f"reusing the world model in {ckpt}")
        model, tokenizer = danlu.load(ckpt)
        return model.eval(), tokenizer, world

    from danlu.data.formats import read_texts
    from danlu.tokenizers.bpe import BPETokenizer
    from danlu.train.config import TrainConfig
    from danlu.train.pretrain import pretrain

    texts = read_texts(world / "pretrain_train.jsonl")
    tokenizer = BPETokenizer.train(texts, vocab_size=2048)
    steps = args.pretrain_steps
    cfg = TrainConfig(
        max_steps=steps, batch_size=args.batch_size, block_size=args.block_size, lr=2e-3,
        warmup_steps=max(1, steps // 20), eval_interval=max(1, steps // 5), eval_batches=8, device="cpu",
        seed=args.seed, show_progress=False,
    )  # fmt: skip
    print(f"pretraining llama-tiny ({args.n_layer} × {args.n_embd}) on the world: {steps} steps of "
          f"{args.batch_size} × {args.block_size} tokens")  # fmt: skip
    shape = dict(n_layer=args.n_layer, n_embd=args.n_embd)
    result = pretrain(world, tokenizer, args.cache / "pretrain", "llama-tiny", cfg, model_overrides=shape)
    s = result.summary
    print(f"  validation loss {s['first_val_loss']:.3f} -> {s['final_val_loss']:.3f}, {s['seconds']:.0f} s")
    stamp.write_text(json.dumps(settings))
    return result.model.eval(), tokenizer, world
