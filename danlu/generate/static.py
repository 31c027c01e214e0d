"""Compile glue for decoding: the static cache, and the model's one forward compiled as a decode step
(the gpt-fast recipe). No model maths lives here: the step calls `model(...)`.

Notation: B batch, L = max_len cache slots, S keys attended, V vocab.

What makes the step compilable is the forward's by-position cache (`models/gpt.py`, `nn/attention.py`): the new
token's key goes to slot `cache_position`, a tensor, so one decode step has the same shapes and addresses every
time and `torch.compile(mode="reduce-overhead")` can capture it in a CUDA graph; the per-row key mask is one
preallocated (B, L) buffer, so left-padded batches and speculative rollback flip booleans instead of building
tensors. On CPU the attention backend "auto" picks the written-out one-query attention inside the compiled step
(`nn/attention.py`). `tests/generate/test_static.py` checks the compiled step against the eager forward.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import nn

from danlu.nn.attention import KVCache


def new_static_cache(model: nn.Module, B: int, max_len: int) -> KVCache:
    """The model's KV cache for B rows and max_len slots (RoPE tables grown here, never inside the step)."""
    return model.new_kv_cache(B, max_len)


def decode_one_static(
    model: nn.Module,
    cache: KVCache,
    key_mask: torch.Tensor,
    tok: torch.Tensor,
    pos: torch.Tensor,
    slot: torch.Tensor,
) -> torch.Tensor:
    """One decode step: tok, pos (B, 1), slot (1,), key_mask (B, S) over the first S cache slots -> (B, V).

    Marks `slot` as real in key_mask, then runs the model's forward writing the cache at `slot` and attending
    the first S slots. On CUDA S is the whole cache, so every shape is fixed and `mode="reduce-overhead"`
    captures the step as a CUDA graph; on CPU S is the filled slots, a dynamic dimension (see
    `steps.decode_one`, which makes that choice). `cache.seq_len` is left to the caller.
    """
    key_mask.index_fill_(1, slot, True)
    out = model(
        tok, attention_mask=key_mask, kv_cache=cache, position_ids=pos, cache_position=slot, logits_to_keep=1
    )
    return out.logits[:, -1]  # (B, V)


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_decode_one(model: nn.Module) -> Callable[..., torch.Tensor]:
    """`decode_one_static` compiled for `model`, built once per model and reused.

    On CUDA `mode="reduce-overhead"` captures the step as a CUDA graph (one launch instead of hundreds). On CPU
    inductor fuses the norms, RoPE, activations and attention into C++ loops around the matmuls and calls them
    from a C++ wrapper, the attended length being dynamic (docs/BENCHMARKS.md: about 1.3x the eager step).
    Weights stay graph inputs (no "freezing"), so a model trained further after a compiled decode still
    decodes with its new weights. One compiled step per (B, L) cache shape: callers round L up (see
    `steps.new_state`) so prompts of similar lengths share.
    """
    fn = _COMPILED.get(model)
    if fn is None:
        if next(model.parameters()).device.type == "cuda":
            fn = torch.compile(decode_one_static, mode="reduce-overhead", fullgraph=True, dynamic=False)
        else:
            # A C++ wrapper instead of a Python one around the ~300 kernel and matmul calls of a step: 10%
            # faster decoding for a longer first compilation (SmolLM2: ~55 s instead of ~25 s; ~5 s once cached).
            # dynamic=None: only the dimensions marked dynamic (the attended length) are symbolic.
            opts = {"cpp_wrapper": True}
            fn = torch.compile(decode_one_static, options=opts, fullgraph=True, dynamic=None)
        _COMPILED[model] = fn
    return fn
