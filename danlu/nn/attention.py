"""Scaled dot-product attention, multi-head and grouped-query, with masks and a key/value cache.

Notation: B batch, T query length, S key length (past + T), C channels, n_head query heads,
n_kv_head key/value heads (GQA: n_kv_head divides n_head; MHA: equal; MQA: 1), head_size = C // n_head.

Attention(Q, K, V) = softmax(Q Kᵀ / sqrt(head_size)) V  (Vaswani et al. 2017, eq. 1; notes 003 §Self-Attention).
We call `torch.nn.functional.scaled_dot_product_attention`, which picks a fused kernel (flash / memory-efficient
/ math) for the device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from danlu.nn.position import apply_rope


class KVCache:
    """Preallocated keys and values for every layer, so decoding one token costs O(S) instead of O(S²).

    Buffers are (B, n_kv_head, max_len, head_size); `seq_len` counts the positions already filled. A fixed
    buffer (rather than concatenating) keeps shapes static, which `torch.compile` / CUDA graphs need.
    """

    def __init__(
        self,
        n_layer: int,
        B: int,
        n_kv_head: int,
        max_len: int,
        head_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (B, n_kv_head, max_len, head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.max_len = max_len
        self.seq_len = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, n_kv_head, T, head_size) at the current position; return all keys/values so far."""
        start, T = self.seq_len, k.shape[2]
        if start + T > self.max_len:
            raise ValueError(f"KV cache full: {start} + {T} tokens exceed its max_len {self.max_len}")
        self.k[layer][:, :, start : start + T] = k
        self.v[layer][:, :, start : start + T] = v
        return self.k[layer][:, :, : start + T], self.v[layer][:, :, : start + T]

    def advance(self, T: int) -> None:
        """Called once per forward, after every layer has written its T new positions."""
        self.seq_len += T

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search keeps the surviving beams)."""
        self.k = [k.index_select(0, index) for k in self.k]
        self.v = [v.index_select(0, index) for v in self.v]


def build_attention_mask(
    attention_mask: torch.Tensor | None, T: int, past: int, device: torch.device, window: int | None = None
) -> torch.Tensor | None:
    """The boolean (B or 1, 1, T, S) mask SDPA takes (True = may attend), or None when plain causal suffices.

    attention_mask: (B, S) with 1 for real tokens and 0 for padding, S = past + T (keys of the cache included).
    Query i (absolute position past + i) may attend key j iff j <= past + i (causal) and key j is not padding.
    `window` (sliding-window attention, Mistral / Gemma local layers) also hides keys j <= past + i - window:
    each query sees itself and the window - 1 keys before it. Slots, not position ids, are compared: left
    padding sits before a row's real tokens, so slot distances equal position distances.
    """
    S = past + T
    windowed = window is not None and S > window  # a window wider than every distance changes nothing
    if attention_mask is None and past == 0 and not windowed:
        return None  # the caller uses is_causal=True, the fastest path
    if attention_mask is None and T == 1 and not windowed:
        return None  # one new token attends everything in the cache
    q_pos = torch.arange(past, S, device=device).unsqueeze(1)  # (T, 1)
    k_pos = torch.arange(S, device=device).unsqueeze(0)  # (1, S)
    mask = k_pos <= q_pos  # (T, S)
    if windowed:
        mask = mask & (k_pos > q_pos - window)
    mask = mask[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        keys = attention_mask[:, None, None, :].bool()  # (B, 1, 1, S)
        # A padding query would otherwise attend nothing (softmax of all -inf is NaN): let it see itself.
        mask = (mask & keys) | (k_pos == q_pos)[None, None]
    return mask


def softcapped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    softcap: float,
    causal: bool,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """softmax(cap · tanh(q kᵀ · scale / cap)) v, Gemma-2's attention-logit soft-capping, written out (SDPA
    has no hook between the scores and the softmax). q (B, n_head, T, hs), k/v (B, n_kv_head, S, hs),
    mask (B | 1, 1, T, S) of booleans or None (then `causal` says whether the last T keys are causal)."""
    B, nh, T, hs = q.shape
    nkv, S = k.shape[1], k.shape[2]
    if nkv != nh:  # each group of n_head / n_kv_head query heads shares one k/v head
        k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, n_head, T, S)
    scores = torch.tanh(scores / softcap) * softcap
    if mask is None and causal and T > 1:
        q_pos = torch.arange(S - T, S, device=q.device).unsqueeze(1)  # (T, 1)
        mask = torch.arange(S, device=q.device).unsqueeze(0) <= q_pos  # (T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    p = F.dropout(scores.float().softmax(-1), dropout_p).to(q.dtype)
    return p @ v  # (B, n_head, T, hs)


class SelfAttention(nn.Module):
    """Multi-head (or grouped-query) self-attention with an optional rotary position and KV cache.

    Optional steps, each off by default (issue 19's architectures):
    - `qk_norm`: "head" normalises q and k per head before RoPE (Qwen3, Gemma-3), "full" normalises the whole
      q and k projections (OLMo-2); `make_norm(width)` builds each norm;
    - `scale`: the q·k multiplier (Gemma: query_pre_attn_scalar^-1/2); None is 1/sqrt(head_size);
    - `softcap`: cap · tanh(scores / cap) before the softmax (Gemma-2).
    `head_size` may differ from C / n_head (Gemma, Qwen3): q is n_head · head_size wide, the output projection
    maps it back to C.
    """

    def __init__(
        self,
        C: int,
        n_head: int,
        n_kv_head: int,
        qkv_bias: bool,
        proj_bias: bool,
        dropout: float = 0.0,
        head_size: int | None = None,
        qk_norm: str = "none",
        make_norm: Callable[[int], nn.Module] | None = None,
        scale: float | None = None,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        assert n_head % n_kv_head == 0 and (head_size is not None or C % n_head == 0)
        self.n_head, self.n_kv_head, self.head_size = n_head, n_kv_head, head_size or C // n_head
        hs = self.head_size
        # One matmul for q, k and v: [q (n_head·hs) | k (n_kv_head·hs) | v (n_kv_head·hs)].
        self.qkv = nn.Linear(C, (n_head + 2 * n_kv_head) * hs, bias=qkv_bias)
        self.proj = nn.Linear(n_head * hs, C, bias=proj_bias)
        self.dropout = dropout
        self.qk_norm, self.scale, self.softcap = qk_norm, scale, softcap
        if qk_norm != "none":
            assert make_norm is not None and qk_norm in ("head", "full")
            self.q_norm = make_norm(hs if qk_norm == "head" else n_head * hs)
            self.k_norm = make_norm(hs if qk_norm == "head" else n_kv_head * hs)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache: KVCache | None = None,
        layer: int = 0,
        causal: bool = True,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). `causal=False` lets every position see every other (an encoder: BERT,
        the Transformer's encoder); `mask` (B or 1, 1, T, S) of booleans then only hides padding."""
        B, T, C = x.shape
        hs, nh, nkv = self.head_size, self.n_head, self.n_kv_head
        q, k, v = self.qkv(x).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
        if self.qk_norm == "full":  # OLMo-2: one norm over all heads' q (and k), before the split into heads
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, n_head, T, head_size)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, n_kv_head, T, head_size)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, n_kv_head, T, head_size)
        if self.qk_norm == "head":  # Qwen3 / Gemma-3: each head's q and k normalised, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        past = 0
        if kv_cache is not None:
            past = kv_cache.seq_len
            k, v = kv_cache.update(layer, k, v)  # (B, n_kv_head, S, head_size)
        dropout_p = self.dropout if self.training else 0.0
        if self.softcap is not None:
            scale = self.scale if self.scale is not None else hs**-0.5
            y = softcapped_attention(q, k, v, mask, scale, self.softcap, causal and past == 0, dropout_p)
        else:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=causal and mask is None and past == 0 and T > 1,
                dropout_p=dropout_p,
                scale=self.scale,
                enable_gqa=nkv != nh,  # each group of n_head / n_kv_head query heads shares one k/v head
            )  # (B, n_head, T, head_size)
        y = y.transpose(1, 2).reshape(B, T, nh * hs)  # (B, T, n_head · head_size)
        return self.proj(y)


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, S) of 1 (real) / 0 (padding) -> the boolean (B, 1, 1, S) SDPA mask hiding padded keys, or None.

    For bidirectional attention (encoders, cross-attention): every query sees every real key. A padded query
    row still sees the real keys, so no row is all -inf; its output is ignored downstream.
    """
    if attention_mask is None:
        return None
    return attention_mask[:, None, None, :].bool()  # (B, 1, 1, S)


class CrossAttention(nn.Module):
    """Encoder-decoder attention (Vaswani et al. 2017, §3.2.3): queries from the decoder, keys and values from
    the encoder output ("memory"). The memory's keys/values are computed once per source by `memory_kv` and
    reused at every decoding step."""

    def __init__(self, C: int, n_head: int, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        assert C % n_head == 0
        self.n_head, self.head_size = n_head, C // n_head
        self.q = nn.Linear(C, C, bias=bias)
        self.kv = nn.Linear(C, 2 * C, bias=bias)  # [k | v] in one matmul
        self.proj = nn.Linear(C, C, bias=bias)
        self.dropout = dropout

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (B, S, C) -> keys and values, each (B, n_head, S, head_size)."""
        B, S, C = memory.shape
        k, v = self.kv(memory).split(C, dim=-1)
        k = k.view(B, S, self.n_head, self.head_size).transpose(1, 2)  # (B, n_head, S, head_size)
        v = v.view(B, S, self.n_head, self.head_size).transpose(1, 2)  # (B, n_head, S, head_size)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) attends over the memory; memory_mask (B, 1, 1, S) hides padded source tokens."""
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, n_head, T, head_size)
        k, v = memory_kv
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=memory_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, n_head, T, head_size)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)
