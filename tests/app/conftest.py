"""Fixtures for the app layer: a small random danlu model with a BPE tokenizer trained on the embedded world
(for LocalLLM), the tiny world itself, and a real redis-server on 127.0.0.1 started for the session."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
import torch

from danlu.data.world import build_world
from danlu.models.gpt import GPT, GPTConfig
from danlu.tokenizers.bpe import BPETokenizer


@pytest.fixture(scope="session")
def world():
    return build_world(0, "tiny")


@pytest.fixture(scope="session")
def local_model(world):
    tokenizer = BPETokenizer.train(world.pretrain_texts("train"), vocab_size=512, show_progress=False)
    torch.manual_seed(0)
    cfg = GPTConfig.from_name(
        "llama-tiny", vocab_size=tokenizer.vocab_size, n_layer=2, n_embd=64, block_size=256
    )
    model = GPT(cfg)
    with torch.no_grad():  # wide weights: greedy output wanders instead of repeating one token
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model.eval(), tokenizer


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory, redis_server):
    """A throwaway redis-server (Debian package redis-server; tests/conftest.py finds it) on a free loopback port,
    no persistence."""
    server = redis_server
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.time() + 20
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run these tests faster on one thread: on a busy 2-core machine a second OpenMP thread mostly
    spins waiting for a core (a 20 ms MiniLM query took 700 ms with two). Restored after each test."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
