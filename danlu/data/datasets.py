"""Token streams for language-model training: tokenize a corpus once, then cut random blocks from it.

The tokens are a tensor in memory, or shards on disk read through memory maps (`shards.TokenStream`, the
way `danlu pretrain` reads them), or a weighted `Mixture` of several.

Batches are a pure function of (seed, step, micro-step): resuming at step s sees exactly the batches an
uninterrupted run would, and under DDP each process takes its own slice of the same global batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
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
    tokens: torch.Tensor | TokenSource,
    B: int,
    T: int,
    seed: int,
    step: int,
    micro: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """Rows [rank·B/world_size, (rank+1)·B/world_size) of the global batch of B random length-T blocks. -> (B', T).

    `tokens` is a 1-D tensor, a memory-mapped `shards.TokenStream` (same blocks as the tensor of the same ids:
    the draws do not depend on where the ids live), or a `Mixture` of them.
    """
    if isinstance(tokens, Mixture):
        return tokens.sample(B, T, seed, step, micro, rank, world_size)
    n = tokens.numel()
    if n < T + 1:
        raise DanluError(
            f"the corpus has only {n} tokens, fewer than one block of block_size={T}; "
            "use more text or a smaller --block-size"
        )
    g = _generator(seed, step, micro)
    starts = torch.randint(0, n - T, (B,), generator=g)
    per_rank = B // world_size
    starts = starts[rank * per_rank : (rank + 1) * per_rank]
    if isinstance(tokens, torch.Tensor):
        return torch.stack([tokens[s : s + T] for s in starts.tolist()])  # (B', T)
    return torch.from_numpy(np.stack([tokens.read(s, T) for s in starts.tolist()]))  # (B', T)


def _generator(seed: int, step: int, micro: int) -> torch.Generator:
    # A fresh generator per (seed, step, micro): no RNG state to save, exact resume for free.
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 131 + micro)


class TokenSource(Protocol):
    def numel(self) -> int: ...

    def read(self, start: int, length: int) -> np.ndarray: ...


class Mixture:
    """Several token sources drawn with fixed weights: each row of a batch first picks its source (by weight),
    then a uniform start inside it. Still a pure function of (seed, step, micro)."""

    def __init__(self, sources: Sequence[torch.Tensor | TokenSource], weights: Sequence[float], names=None):
        names = list(names) if names is not None else [f"source {i}" for i in range(len(sources))]
        if len(sources) != len(weights) or not sources:
            raise DanluError("a data mixture needs one weight per source")
        for name, w in zip(names, weights):
            if not (w > 0 and math.isfinite(w)):
                raise DanluError(f"mixture weight of {name} is {w}; weights must be positive numbers")
        total = float(sum(weights))
        self.sources, self.names = list(sources), names
        self.weights = [w / total for w in weights]

    def numel(self) -> int:
        return sum(s.numel() for s in self.sources)

    def sample(
        self, B: int, T: int, seed: int, step: int, micro: int, rank: int, world_size: int
    ) -> torch.Tensor:
        for name, src in zip(self.names, self.sources):
            if src.numel() < T + 1:
                raise DanluError(
                    f"{name} has only {src.numel()} tokens, fewer than one block of block_size={T}; "
                    "give it more text, drop it from the mixture or lower --block-size"
                )
        g = _generator(seed, step, micro)
        which = torch.multinomial(torch.tensor(self.weights, dtype=torch.float64), B, True, generator=g)
        u = torch.rand(B, generator=g, dtype=torch.float64)
        per_rank = B // world_size
        rows = []
        for i in range(rank * per_rank, (rank + 1) * per_rank):
            src = self.sources[int(which[i])]
            s = int(u[i] * (src.numel() - T))
            block = src[s : s + T] if isinstance(src, torch.Tensor) else torch.from_numpy(src.read(s, T))
            rows.append(block.long())
        return torch.stack(rows)  # (B', T)
