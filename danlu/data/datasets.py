"""Token streams for language-model training: tokenize a corpus once, then cut random blocks from it.

Batches are a pure function of (seed, step, micro-step): resuming at step s sees exactly the batches an
uninterrupted run would, and under DDP each process takes its own slice of the same global batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from danlu.errors import DanluError


def tokenize_corpus(texts: Sequence[str], tokenizer, show_progress: bool = False) -> torch.Tensor:
    """All documents as one 1-D int64 tensor, each followed by the tokenizer's end-of-text id."""
    if not texts:
        raise DanluError("the corpus is empty: no documents to tokenize")
    eos = tokenizer.eos_token_id
    chunks: list[list[int]] = []
    step = 2048
    it = range(0, len(texts), step)
    if show_progress:
        from tqdm import tqdm

        it = tqdm(it, desc="tokenize", unit="batch", leave=False)
    for i in it:
        for ids in tokenizer.encode_batch(list(texts[i : i + step])):
            chunks.append(ids + [eos] if eos is not None else ids)
    return torch.tensor([t for c in chunks for t in c], dtype=torch.long)


def sample_blocks(
    tokens: torch.Tensor,
    B: int,
    T: int,
    seed: int,
    step: int,
    micro: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """Rows [rank·B/world_size, (rank+1)·B/world_size) of the global batch of B random length-T blocks. -> (B', T)."""
    n = tokens.numel()
    if n < T + 1:
        raise DanluError(
            f"the corpus has only {n} tokens, fewer than one block of block_size={T}; "
            "use more text or a smaller --block-size"
        )
    # A fresh generator per (seed, step, micro): no RNG state to save, exact resume for free.
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 131 + micro)
    starts = torch.randint(0, n - T, (B,), generator=g)
    per_rank = B // world_size
    starts = starts[rank * per_rank : (rank + 1) * per_rank]
    return torch.stack([tokens[s : s + T] for s in starts.tolist()])  # (B', T)
