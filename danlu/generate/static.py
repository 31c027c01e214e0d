"""A lean decoding forward for danlu's GPT over a static key/value cache (the gpt-fast recipe).

Notation: B batch, T new tokens this call, L = max_len cache slots, S keys attended, C channels, V vocab,
n_head query heads, n_kv_head key/value heads, head_size = C // n_head.

Why not `model.forward`? Decoding wants three things the training forward does not give:
- only the last position's logits after prefill (the (T, V) un-embedding of a long prompt is wasted work);
- a cache written at positions given as a *tensor* (`index_copy_`), so one decode step has the same shapes
  and addresses every time: `torch.compile(mode="reduce-overhead")` can then capture it in a CUDA graph;
- per-row key masks kept in one preallocated (B, L) buffer, so left-padded batches and speculative rollback
  are a matter of flipping booleans, not re-building tensors.
The maths is exactly the model's own: it calls the model's embedding, norm, projection and MLP modules (so a
quantised model is decoded by the same code), and only re-states attention: softmax(q kᵀ / sqrt(head_size)) v.
`tests/generate/test_static.py` checks it against `model.forward`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from danlu.nn.attention import KVCache
from danlu.nn.layers import RMSNorm
from danlu.nn.position import apply_rope


class StaticKVCache(KVCache):
    """The model's KVCache buffers (B, n_kv_head, L, head_size) per layer, written by slot instead of appended.

    Slots come as a tensor, so one decode step has the same shapes and addresses every time; buffers are never
    re-allocated (beam reordering copies in place), so a captured CUDA graph stays valid. `seq_len` is unused:
    `steps.DecodeState` counts the filled slots.
    """

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v (B, n_kv_head, T, head_size) at cache slots (T,)."""
        self.k[layer].index_copy_(2, slots, k)
        self.v[layer].index_copy_(2, slots, v)

    def reorder(self, index: torch.Tensor) -> None:
        """Row i becomes old row index[i] (beam search keeps the surviving beams), in place."""
        for buf in (*self.k, *self.v):
            buf.copy_(buf.index_select(0, index))


def new_static_cache(model: nn.Module, B: int, max_len: int) -> StaticKVCache:
    cfg, p = model.config, model.wte.weight
    model.ensure_positions(max_len)  # RoPE tables are grown lazily, and never inside the compiled step
    return StaticKVCache(cfg.n_layer, B, cfg.n_kv_head, max_len, cfg.head_size, p.device, p.dtype)


def gpt_forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    cache: StaticKVCache,
    slots: torch.Tensor,
    attn_mask: torch.Tensor | None,
    kv_len: int,
    last_only: bool,
    one_query: bool = False,
) -> torch.Tensor:
    """Run a danlu GPT on input_ids (B, T) written to cache `slots` (T,), attending keys [0, kv_len).

    position_ids (B, T) give each token's position (left padding does not count); attn_mask is a boolean
    (B | 1, 1, T, S) mask (True = may attend), or None when every one of the S keys may be attended.
    kv_len = L attends the whole cache (static shapes for CUDA graphs). one_query (T = 1 only) writes attention
    out for `torch.compile` instead of calling SDPA. Returns logits (B, T or 1, V).

    The residual stream is kept 2-D, (B * T, C): with a (B, T, C) stream inductor hands the matmuls a
    (1, C) view with a zero stride at B = T = 1, and ATen copies such an input before every matmul.
    """
    B, T = input_ids.shape
    x = model.wte(input_ids.reshape(B * T))  # (B * T, C)
    rope = None
    if model.wpe is not None:
        x = x + model.wpe(position_ids.reshape(B * T))
    else:
        rope = (model.rope_cos[position_ids][:, None], model.rope_sin[position_ids][:, None])  # (B, 1, T, hs)
    for i, block in enumerate(model.blocks):
        attn = block.attn
        nh, nkv, hs = attn.n_head, attn.n_kv_head, attn.head_size
        qkv = (
            attn.qkv(_norm(block.norm1, x)).view(B, T, nh + 2 * nkv, hs).transpose(1, 2)
        )  # (B, heads, T, hs)
        qk, v = (
            qkv[:, : nh + nkv],
            qkv[:, nh + nkv :],
        )  # (B, n_head + n_kv_head, T, hs), (B, n_kv_head, T, hs)
        if rope is not None:
            qk = apply_rope(qk, *rope)  # queries and keys rotate alike: one call for both
        q, k = qk[:, :nh], qk[:, nh:]  # (B, n_head, T, head_size), (B, n_kv_head, T, head_size)
        cache.write(i, slots, k, v)
        keys, values = cache.k[i][:, :, :kv_len], cache.v[i][:, :, :kv_len]  # (B, n_kv_head, S, head_size)
        if one_query:
            y = _attend_one_query(q, keys, values, attn_mask).reshape(B, nh * hs)  # (B, C), T = 1
        else:
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask, enable_gqa=nkv != nh)
            y = y.transpose(1, 2).reshape(B * T, nh * hs)  # (B * T, C)
        x = x + attn.proj(y)
        x = x + block.mlp(_norm(block.norm2, x))
    x = x.view(B, T, -1)  # (B, T, C)
    if last_only:
        x = x[:, -1:]  # (B, 1, C): prefill only needs the next token's distribution
    return model.lm_head(_norm(model.norm_f, x))  # (B, T or 1, V)


def _attend_one_query(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, attn_mask: torch.Tensor | None
) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(head_size)) v for one query per row: q (B, n_head, 1, hs), keys and values
    (B, n_kv_head, S, hs), attn_mask (B, 1, 1, S) or None -> (B, n_kv_head, group, hs), query head h being
    row h // group, column h % group (query heads h share key head h // group, as in GQA).

    Written as products and sums so that inductor fuses scores, mask, softmax and the weighted sum into one
    C++ loop nest. PyTorch's CPU flash-attention kernel, tuned for long query blocks, spends ~60 µs a call on
    a single query (SmolLM2 decoding: 30 calls, 7% of a step).
    """
    B, nh, _, hs = q.shape
    nkv = keys.shape[1]
    q = q.reshape(B, nkv, nh // nkv, 1, hs)  # (B, n_kv_head, group, 1, hs)
    scores = (q * keys[:, :, None]).sum(-1) * hs**-0.5  # (B, n_kv_head, group, S)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))  # (B, 1, 1, S) broadcasts over the heads
    p = scores.softmax(-1)
    return (p[..., None] * values[:, :, None]).sum(-2)  # (B, n_kv_head, group, hs)


def _norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's norm; RMSNorm as PyTorch's one fused op (same formula, fp32 inside) instead of five."""
    if isinstance(norm, RMSNorm):
        return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.eps)
    return norm(x)


def decode_one_static(
    model: nn.Module,
    cache: StaticKVCache,
    key_mask: torch.Tensor,
    tok: torch.Tensor,
    pos: torch.Tensor,
    slot: torch.Tensor,
    one_query: bool = False,
) -> torch.Tensor:
    """One decode step: tok, pos (B, 1), slot (1,), key_mask (B, S) over the first S cache slots -> (B, V).

    Marks `slot` as real in key_mask, then attends the first S slots under the (B, 1, 1, S) mask. On CUDA S is
    the whole cache, so every shape is fixed and `mode="reduce-overhead"` captures the step as a CUDA graph; on
    CPU S is the filled slots, a dynamic dimension, and attention is written out (`one_query`; see
    `steps.decode_one`, which makes both choices).
    """
    key_mask.index_fill_(1, slot, True)
    S = key_mask.shape[1]
    mask = key_mask[:, None, None, :]  # (B, 1, 1, S)
    return gpt_forward(model, tok, pos, cache, slot, mask, S, last_only=False, one_query=one_query)[:, -1]


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
