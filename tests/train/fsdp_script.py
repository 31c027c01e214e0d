"""Run by tests/train/test_fsdp.py, alone or under torchrun: a tiny GPT trained whole, then cut and resumed.

argv: OUT STRATEGY. Writes OUT/full (6 steps), and under torchrun also OUT/cut: the same run stopped after
step 5 (its last checkpoint is step 3), then resumed in the same processes to step 6; then the header of one shard
of the final checkpoint is broken and a resume must fail with a DanluError (its message goes to OUT/corrupt.txt)."""

import sys
from pathlib import Path

import torch

from danlu.data.datasets import sample_blocks
from danlu.errors import DanluError
from danlu.models.checkpoints import save_model
from danlu.models.gpt import GPT, GPTConfig
from danlu.train.loop import DistInfo, TrainConfig, train

out_dir, strategy = sys.argv[1], sys.argv[2]
corpus = torch.randint(0, 64, (5000,), generator=torch.Generator().manual_seed(1))
dist = DistInfo()
cfg = TrainConfig(max_steps=6, batch_size=8, block_size=16, lr=3e-3, warmup_steps=2, eval_interval=3,
                  eval_batches=2, grad_accum=2, ckpt_interval=3, log_interval=1, show_progress=False, strategy=strategy,
                  gradient_checkpointing="--recompute" in sys.argv)  # fmt: skip


def new_model() -> GPT:
    torch.manual_seed(0)
    # 3 heads of 12: n_embd 36 does not split evenly in dim-0 shards of every tensor over 2 ranks
    return GPT(GPTConfig.from_name("llama-tiny", vocab_size=64, n_layer=2, n_embd=36, n_head=3, n_kv_head=1,
                                   block_size=32))  # fmt: skip


def batch_fn(split: str, step: int, micro: int) -> dict:
    seed = 0 if split == "train" else 99
    x = sample_blocks(corpus, cfg.batch_size, cfg.block_size, seed, step, micro, dist.rank, dist.world_size)
    return {"input_ids": x, "labels": x}


class Cut(Exception):
    pass


def cut_at_5(step: int, record: dict) -> None:
    if step == 5:
        raise Cut


train(new_model(), batch_fn, cfg, f"{out_dir}/full", save_fn=save_model)
if dist.enabled:
    try:
        train(new_model(), batch_fn, cfg, f"{out_dir}/cut", save_fn=save_model, on_step=cut_at_5)
    except Cut:
        pass
    train(new_model(), batch_fn, cfg, f"{out_dir}/cut", save_fn=save_model, resume=True)
    import torch.distributed as tdist

    shard = Path(out_dir, "cut", "checkpoint", "sharded", "shard-00002-model-00001-of-00001.safetensors")
    if dist.is_main:
        # same size (the checkpoint's list of file sizes still matches), but a header that cannot be read
        data = bytearray(shard.read_bytes())
        data[:8] = (2**40).to_bytes(8, "little")
        shard.write_bytes(bytes(data))
    tdist.barrier()
    try:
        train(new_model(), batch_fn, cfg, f"{out_dir}/cut", save_fn=save_model, resume=True)
    except DanluError as e:
        Path(out_dir, f"corrupt{dist.rank}.txt").write_text(str(e))
