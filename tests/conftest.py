"""Fixtures shared by the fine-tuning and alignment tests (tests/tune, tests/align): the tiny world, a BPE
tokenizer trained on it, tiny GPTs, and the CLI entry point."""

import pytest
import torch

from danlu.data.world import build_world
from danlu.models.gpt import GPT, GPTConfig
from danlu.tokenizers.bpe import BPETokenizer


@pytest.fixture(scope="session")
def world():
    return build_world(seed=0, size="tiny")


@pytest.fixture(scope="session")
def tokenizer(world):
    return BPETokenizer.train(world.pretrain_texts("train"), vocab_size=400)


@pytest.fixture
def make_gpt(tokenizer):
    def make(preset="llama-tiny", seed=0, **overrides):
        torch.manual_seed(seed)
        shape = dict(vocab_size=tokenizer.vocab_size, n_layer=2, n_embd=32, n_head=4, block_size=128)
        if preset.startswith("llama"):
            shape["n_kv_head"] = 2
        return GPT(GPTConfig.from_name(preset, **{**shape, **overrides}))

    return make


@pytest.fixture
def cli():
    """`danlu.cli.main` (cli.py registers the fine-tuning and alignment commands)."""
    from danlu.cli import COMMAND_MODULES, main

    assert {"danlu.tune.commands", "danlu.align.commands"} <= set(COMMAND_MODULES)
    return main
