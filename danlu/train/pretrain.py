"""Causal-LM pretraining from text: tokenize a corpus, build a GPT from a preset, run the training loop.

Used by `danlu pretrain` and by `danlu demo`. Data (`load_tokens`): a folder of token shards (`danlu data
prepare`), a world folder (pretrain_train.jsonl + pretrain_val.jsonl) or .txt / .jsonl / .parquet files (5% of
documents, by hash, held out), prepared once into a cache and read through memory maps; or a weighted mixture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from danlu.data.datasets import sample_blocks
from danlu.errors import DanluError
from danlu.models.checkpoints import load_model, save_model
from danlu.models.gpt import GPT, GPTConfig
from danlu.train.checkpoint import find_checkpoint
from danlu.train.loop import DistInfo, TrainConfig, train


def load_corpus(data: str | Path | list[str | Path]) -> tuple[list[str], list[str]]:
    """(train texts, validation texts) from a world folder or text/JSONL files."""
    from danlu.data.formats import read_texts

    paths = [Path(p) for p in (data if isinstance(data, list) else [data])]
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        train_file, val_file = folder / "pretrain_train.jsonl", folder / "pretrain_val.jsonl"
        if not train_file.is_file():
            raise DanluError(
                f"{folder} is a folder without pretrain_train.jsonl; pass a world folder (`danlu world --out DIR`) "
                "or text files"
            )
        train_texts = read_texts(train_file)
        val_texts = read_texts(val_file) if val_file.is_file() else []
    else:
        train_texts = [t for p in paths for t in read_texts(p)]
        val_texts = []
    if not val_texts:
        if len(train_texts) >= 20:
            cut = len(train_texts) - max(1, len(train_texts) // 20)
            train_texts, val_texts = train_texts[:cut], train_texts[cut:]
        else:  # too few documents to hold any out: validate on the training text (said in the report)
            val_texts = list(train_texts)
    return train_texts, val_texts


def load_tokens(
    data: str | Path | list[str | Path], tokenizer: Any, block_size: int, show_progress: bool = False
):
    """{"train", "val"} token sources, memory-mapped shards (see `danlu.data.corpus`): a prepared folder, a world
    folder or files (prepared once into a cache), or a weighted mixture `["a=0.7", "b=0.3"]`."""
    from danlu.data.corpus import load_token_splits

    return load_token_splits(data, tokenizer, block_size, show_progress)


@dataclass
class PretrainResult:
    model: GPT
    summary: dict[str, Any]
    checkpoint: Path


def pretrain(
    data: str | Path | list[str | Path],
    tokenizer: Any,
    out_dir: str | Path,
    preset: str = "llama-tiny",
    train_config: TrainConfig | None = None,
    model_overrides: dict[str, Any] | None = None,
    resume: bool = False,
) -> PretrainResult:
    """Pretrain a GPT on `data` with `tokenizer`; the checkpoint lands in `out_dir/checkpoint`."""
    cfg = train_config or TrainConfig()
    out_dir = Path(out_dir)
    tokens = load_tokens(data, tokenizer, cfg.block_size, show_progress=cfg.show_progress)
    for split, t in tokens.items():
        if t.numel() <= cfg.block_size:
            raise DanluError(
                f"the {split} split has {t.numel()} tokens, not more than block_size={cfg.block_size}; "
                "add text or lower --block-size"
            )
    if resume:  # the architecture from the checkpoint; the loop then restores weights and optimizer from it
        ckpt, _ = find_checkpoint(out_dir, say=False)
        model = load_model(ckpt).train()
    else:
        overrides = {"vocab_size": tokenizer.vocab_size, **(model_overrides or {})}
        torch.manual_seed(cfg.seed)
        model = GPT(GPTConfig.from_name(preset, **overrides))
    if model.config.vocab_size < tokenizer.vocab_size:
        raise DanluError(
            f"the model's vocab_size {model.config.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}"
        )
    dist = DistInfo()

    def batch_fn(split: str, step: int, micro: int) -> dict[str, torch.Tensor]:
        seed = (
            cfg.seed if split == "train" else cfg.seed + 1
        )  # validation batches are fixed across evaluations
        x = sample_blocks(
            tokens[split], cfg.batch_size, cfg.block_size, seed, step, micro, dist.rank, dist.world_size
        )
        return {"input_ids": x, "labels": x}

    summary = train(
        model,
        batch_fn,
        cfg,
        out_dir,
        save_fn=lambda m, d: save_model(m, d, tokenizer=tokenizer),
        resume=resume,
    )
    summary["train_tokens"] = int(tokens["train"].numel())
    summary["epochs"] = round(summary["tokens"] / max(1, summary["train_tokens"]), 3)
    summary["params"] = model.num_params()
    return PretrainResult(model=model, summary=summary, checkpoint=out_dir / "checkpoint")
