"""Run by tests/train/test_loop.py, alone or under torchrun: train a tiny GPT on a fixed random corpus."""

import sys

import torch

from danlu.data.datasets import sample_blocks
from danlu.models.gpt import GPT, GPTConfig
from danlu.train.loop import DistInfo, TrainConfig, train

out_dir = sys.argv[1]
torch.manual_seed(0)
corpus = torch.randint(0, 64, (5000,), generator=torch.Generator().manual_seed(1))
model = GPT(GPTConfig.from_name("gpt2-tiny", vocab_size=64, n_layer=2, n_embd=32, n_head=2, block_size=32))
dist = DistInfo()
cfg = TrainConfig(max_steps=6, batch_size=8, block_size=16, lr=3e-3, warmup_steps=2, eval_interval=3,
                  eval_batches=2, grad_accum=2, log_interval=2, show_progress=False)  # fmt: skip


def batch_fn(split: str, step: int, micro: int) -> dict:
    seed = 0 if split == "train" else 99
    x = sample_blocks(corpus, cfg.batch_size, cfg.block_size, seed, step, micro, dist.rank, dist.world_size)
    return {"input_ids": x, "labels": x}


train(model, batch_fn, cfg, out_dir)
