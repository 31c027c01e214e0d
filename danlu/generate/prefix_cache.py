"""A prefix cache: the keys and values of prompt prefixes already computed, reused instead of prefilled again
(a long system prompt every request shares, a chat's earlier turns, an agent's transcript).

Notation: n_layer layers, n_kv_head key/value heads, head_size, `block` tokens per block.

A prompt is cut into blocks of `block` tokens. Block j is keyed by a digest of every token up to its end (a
chain: digest_j = blake2b(digest_{j-1} + tokens of block j)), so a key names the whole prefix, not the block
alone, and two prompts share exactly the blocks of their common prefix. The keys and values of a token depend
only on the tokens up to it (causal attention, positions counted from the row's start), so a cached block is
valid for any prompt that starts with that prefix. A cryptographic digest, not Python's `hash`: prompts come
from strangers, and a crafted collision would hand one client another's keys.

Each block holds (n_layer, 2, n_kv_head, block, head_size): keys and values. Bounded by `max_tokens` (blocks x
block), least recently used first out; a lookup touches a prefix's blocks child first, so a parent block is
always more recent than its children and is never evicted before them (a chain never loses its middle).
vLLM's automatic prefix caching and SGLang's radix cache keep prefixes the same way, over their pages.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

import torch

from danlu.errors import DanluError


class PrefixCache:
    """Prompt-prefix keys and values in blocks, LRU within max_tokens; `hit_tokens / prompt_tokens` over every
    lookup is the hit rate."""

    def __init__(self, max_tokens: int, block: int = 16) -> None:
        if max_tokens < 0 or block < 1:
            raise DanluError(f"prefix cache: max_tokens={max_tokens} must be >= 0 and block={block} >= 1")
        self.max_tokens, self.block = max_tokens, block
        self.blocks: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.hit_tokens = self.prompt_tokens = self.lookups = self.hits = 0

    @property
    def tokens(self) -> int:
        """Tokens held now."""
        return len(self.blocks) * self.block

    def _keys(self, ids: list[int], n_blocks: int) -> list[bytes]:
        keys, digest = [], b""
        for j in range(n_blocks):
            chunk = ids[j * self.block : (j + 1) * self.block]
            digest = hashlib.blake2b(
                digest + b"".join(t.to_bytes(4, "little") for t in chunk), digest_size=16
            ).digest()
            keys.append(digest)
        return keys

    def lookup(self, ids: list[int]) -> torch.Tensor | None:
        """The cached keys and values of the longest cached prefix of `ids` that leaves at least one token to
        run (its logits give the next token): (n_layer, 2, n_kv_head, hit, head_size), or None."""
        self.lookups += 1
        self.prompt_tokens += len(ids)
        found: list[bytes] = []
        for key in self._keys(ids, (len(ids) - 1) // self.block):
            if key not in self.blocks:
                break
            found.append(key)
        if not found:
            return None
        for key in reversed(found):  # child first: parents end up the most recent
            self.blocks.move_to_end(key)
        self.hits += 1
        self.hit_tokens += len(found) * self.block
        return torch.cat([self.blocks[k] for k in found], dim=3)

    def store(self, ids: list[int], read: Callable[[int, int], torch.Tensor]) -> None:
        """Keep the full blocks of `ids` not held yet; read(start, stop) gives the keys and values of tokens
        [start, stop) as (n_layer, 2, n_kv_head, stop - start, head_size) (copied here)."""
        n_blocks = min(len(ids) // self.block, self.max_tokens // self.block)
        keys = self._keys(ids, n_blocks)
        for j, key in enumerate(keys):
            if key not in self.blocks:
                self.blocks[key] = read(j * self.block, (j + 1) * self.block).clone()
        for key in reversed(keys):
            self.blocks.move_to_end(key)
        while self.tokens > self.max_tokens:
            self.blocks.popitem(last=False)

    def to_dict(self) -> dict[str, float | int]:
        rate = self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        return {
            "hit_rate": round(rate, 4),
            "hit_tokens": self.hit_tokens,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.tokens,
        }
