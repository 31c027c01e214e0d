"""FSDP2 (`--strategy fsdp`) under torchrun on CPU (gloo): the 1-process loss curve, exact resume from its
sharded checkpoint, a consolidated checkpoint any command loads; gradient checkpointing changes no number."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from danlu.data.datasets import sample_blocks
from danlu.errors import DanluError
from danlu.models.checkpoints import load_model
from danlu.models.gpt import GPT, GPTConfig
from danlu.train.distributed import enable_gradient_checkpointing, resolve_strategy
from danlu.train.loop import TrainConfig, train

HERE = Path(__file__).parent


def _losses(out_dir: Path) -> tuple[list[float], list[float]]:
    recs = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r], [r["val_loss"] for r in recs if "val_loss" in r]


def test_fsdp_two_processes_match_one_and_resume_exactly(tmp_path):
    script = str(HERE / "fsdp_script.py")
    one = subprocess.run([sys.executable, script, str(tmp_path / "one"), "single"], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
         script, str(tmp_path / "two"), "fsdp"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    train_1, val_1 = _losses(tmp_path / "one" / "full")
    train_2, val_2 = _losses(tmp_path / "two" / "full")
    assert len(train_1) == len(train_2) == 6 and len(val_1) == len(val_2) == 3
    assert max(abs(a - b) for a, b in zip(train_1 + val_1, train_2 + val_2)) < 1e-4
    # cut after step 5, resumed from the step-3 sharded checkpoint: the log of one uninterrupted FSDP run
    assert _losses(tmp_path / "two" / "cut") == _losses(tmp_path / "two" / "full")

    ckpt = tmp_path / "two" / "full" / "checkpoint"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["strategy"] == "fsdp" and state["world_size"] == 2
    shards = sorted(p.name for p in (ckpt / "sharded").iterdir())
    assert shards == [f"shard-0000{r}-model-00001-of-00001.safetensors" for r in (1, 2)]  # safetensors only
    # the consolidated checkpoint is a plain danlu checkpoint with the 1-process run's weights
    single, sharded = load_model(tmp_path / "one" / "full" / "checkpoint"), load_model(ckpt)
    assert sharded.lm_head.weight is sharded.wte.weight  # still tied
    for name, w in single.state_dict().items():
        torch.testing.assert_close(sharded.state_dict()[name], w, atol=1e-5, rtol=0)
    # one process cannot pick up the sharded optimizer: one clear error
    model = GPT(GPTConfig.from_name("llama-tiny", vocab_size=64, n_layer=2, n_embd=36, n_head=3, n_kv_head=1,
                                    block_size=32))  # fmt: skip
    cfg = TrainConfig(max_steps=7, batch_size=8, block_size=16, show_progress=False)
    with pytest.raises(DanluError, match="saved by a --strategy fsdp run .* resume it under torchrun"):
        train(model, lambda *a: {}, cfg, tmp_path / "two" / "full", resume=True)
    # a broken shard: one clear error on every rank, not a traceback
    for rank in (0, 1):
        message = (tmp_path / "two" / f"corrupt{rank}.txt").read_text()
        assert message.startswith("cannot resume: the shards in ") and "sharded" in message


def _tiny(tmp_path):
    torch.manual_seed(0)
    corpus = torch.randint(0, 50, (3000,), generator=torch.Generator().manual_seed(3))
    model = GPT(
        GPTConfig.from_name("gpt2-tiny", vocab_size=50, n_layer=3, n_embd=32, n_head=4, block_size=32)
    )

    def batch_fn(split, step, micro):
        x = sample_blocks(corpus, 4, 16, 0 if split == "train" else 7, step, micro)
        return {"input_ids": x, "labels": x}

    return model, batch_fn


def test_gradient_checkpointing_changes_no_loss_and_no_name(tmp_path):
    runs = {}
    for recompute in (False, True):
        model, batch_fn = _tiny(tmp_path)
        names = list(model.state_dict())
        cfg = TrainConfig(max_steps=4, batch_size=4, block_size=16, warmup_steps=1, eval_interval=2,
                          eval_batches=1, show_progress=False, gradient_checkpointing=recompute)  # fmt: skip
        train(model, batch_fn, cfg, tmp_path / str(recompute))
        assert list(model.state_dict()) == names  # checkpoints keep their tensor names
        runs[recompute] = _losses(tmp_path / str(recompute))
    assert max(abs(a - b) for a, b in zip(sum(runs[False], []), sum(runs[True], []))) < 1e-5


def test_gradient_checkpointing_recomputes_in_backward():
    model, batch_fn = _tiny(None)
    enable_gradient_checkpointing(model)
    calls = []
    model.blocks[0].attn.register_forward_hook(lambda *a: calls.append(torch.is_grad_enabled()))
    x = batch_fn("train", 0, 0)
    model(**x).loss.backward()
    assert len(calls) == 2  # the forward, and its recomputation during backward
    with torch.no_grad():
        model(**x)
    assert len(calls) == 3  # evaluation runs the block once


def test_strategies():
    assert resolve_strategy("auto", 1) == "single" and resolve_strategy("auto", 2) == "ddp"
    assert resolve_strategy("fsdp", 4) == "fsdp" and resolve_strategy("fsdp", 1) == "single"
    with pytest.raises(DanluError, match="--strategy single runs one process, but torchrun started 2"):
        resolve_strategy("single", 2)
    with pytest.raises(DanluError, match="strategy must be auto\\|single\\|ddp\\|fsdp: 'zero3'"):
        TrainConfig(strategy="zero3")
    with pytest.raises(DanluError, match="needs a model made of Transformer blocks"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))
