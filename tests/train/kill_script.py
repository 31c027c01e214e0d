"""Child process of test_checkpoint_kills.py: a tiny GPT trained with a checkpoint after every step, resuming
from OUT when a checkpoint is there. Writes `resumed_from N`, stderr and the final losses (JSON) to LOG.

The test starts it from a forkserver that imported torch once, so each of its many runs starts in
milliseconds; `python kill_script.py OUT STEPS` runs it alone."""

import os
import sys
from pathlib import Path

import matplotlib
import torch
import torch._dynamo  # noqa: F401  (AdamW imports it: seconds, paid once in the forkserver)

from danlu.data.datasets import sample_blocks
from danlu.models.checkpoints import save_model
from danlu.models.gpt import GPT, GPTConfig
from danlu.train.checkpoint import find_checkpoint
from danlu.train.loop import TrainConfig, train

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402,F401  (the loss plot's import, paid once too)


def run(out: str, max_steps: int, env: dict[str, str], log: str | None = None) -> None:
    out_dir = Path(out)
    os.environ.update(env)
    if log is not None:  # everything this process says, kept even when it is SIGKILLed
        f = open(log, "w", buffering=1)
        os.dup2(f.fileno(), 2)
        sys.stdout = sys.stderr = f
    torch.set_num_threads(1)  # the same arithmetic in every process, whatever the machine's load
    torch.manual_seed(0)
    corpus = torch.randint(0, 50, (4000,), generator=torch.Generator().manual_seed(3))
    model = GPT(
        GPTConfig.from_name("llama-tiny", vocab_size=50, n_layer=2, n_embd=32, n_head=4, block_size=32)
    )

    def batch_fn(split, step, micro):
        x = sample_blocks(corpus, 4, 16, 0 if split == "train" else 7, step, micro)
        return {"input_ids": x, "labels": x}

    resume = (out_dir / "checkpoint").exists() or (out_dir / ".checkpoint.old").exists()
    start = find_checkpoint(out_dir, say=False)[1] if resume else 0
    print(f"resumed_from {start}", flush=True)
    cfg = TrainConfig(max_steps=max_steps, batch_size=4, block_size=16, lr=5e-3, warmup_steps=2,
                      eval_interval=3, eval_batches=2, ckpt_interval=1, show_progress=False)  # fmt: skip
    train(model, batch_fn, cfg, out_dir, save_fn=save_model, resume=resume)
    print("finished", flush=True)


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), {})
