"""Scaled dot-product attention, multi-head and grouped-query, with masks and a key/value cache.

Notation: B batch, T query length, S key length (past + T), C channels, n_head query heads,
n_kv_head key/value heads (GQA: n_kv_head divides n_head; MHA: equal; MQA: 1), head_size = C // n_head.

Attention(Q, K, V) = softmax(Q Kᵀ / sqrt(head_size)) V  (Vaswani et al. 2017, eq. 1; notes 003 §Self-Attention).
Attention backends (`SelfAttention.attn_impl`): "sdpa" calls `torch.nn.functional.scaled_dot_product_attention`,
which picks a fused kernel (flash / memory-efficient / math) for the device; "one_query" writes attention out as
products and sums for one-query decode steps, which inductor fuses on CPU; "auto" picks per call. A layer with
an attention-logit soft-cap (Gemma-2) runs "softcap", the scores written out (SDPA has no hook before the
softmax). The causal + padding (+ sliding-window) mask is built in one place, `build_attention_mask`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from danlu.nn.position import apply_rope


class KVCache:
    """Preallocated keys and values for every layer, written at cache positions (gpt-fast's and transformers'
    static cache), so decoding one token costs O(S) instead of O(S²).

    Buffers are (B, n_kv_head, max_len, head_size) per layer, allocated once and never re-allocated (`reorder`
    copies in place): a decode step sees the same shapes and addresses every time, which `torch.compile` and
    CUDA graphs need. A forward writes its T new keys at `cache_position`, a (T,) tensor of slots: the slot is
    data, not a Python constant a compiled step would be specialised (and recompiled) on. A (B, T) tensor gives
    each row its own slots (a continuous batch, `generate/continuous.py`, whose rows sit at different lengths).

    `seq_len` counts the slots in use. A forward given no cache_position appends at `seq_len` and advances it
    (eager callers: feed tokens, the cache follows); a caller that passes cache_position (the decoding state of
    `generate/steps.py`) keeps `seq_len` itself, outside any compiled region.
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

    def check_room(self, T: int) -> None:
        """Raise if appending T tokens at seq_len would run past the buffers."""
        if self.seq_len + T > self.max_len:
            raise ValueError(f"KV cache full: {self.seq_len} + {T} tokens exceed its max_len {self.max_len}")

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, cache_position: torch.Tensor, kv_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, n_kv_head, T, head_size) at slots cache_position (T,), or at each row's own slots,
        cache_position (B, T) (a continuous batch: rows at different lengths); return the keys and values of
        slots [0, kv_len), each (B, n_kv_head, kv_len, head_size)."""
        if cache_position.dim() == 2:  # per row: row b's token t goes to slot cache_position[b, t]
            index = cache_position[:, None, :, None].expand_as(k)  # (B, n_kv_head, T, head_size)
            self.k[layer].scatter_(2, index, k.to(self.k[layer].dtype))
            self.v[layer].scatter_(2, index, v.to(self.v[layer].dtype))
        else:
            self.k[layer].index_copy_(2, cache_position, k.to(self.k[layer].dtype))
            self.v[layer].index_copy_(2, cache_position, v.to(self.v[layer].dtype))
        return self.k[layer][:, :, :kv_len], self.v[layer][:, :, :kv_len]

    def rows(self, start: int, stop: int) -> KVCache:
        """A cache over rows [start, stop) sharing these buffers (views: writes land here). A continuous batch
        prefills one row, or decodes its first rows, without touching or copying the others."""
        view = object.__new__(KVCache)
        view.k = [buf[start:stop] for buf in self.k]
        view.v = [buf[start:stop] for buf in self.v]
        view.max_len, view.seq_len = self.max_len, self.seq_len
        return view

    def advance(self, T: int) -> None:
        """Called once per appending forward, after every layer has written its T new positions."""
        self.seq_len += T

    def reorder(self, index: torch.Tensor) -> None:
        """Row i becomes old row index[i] (beam search keeps the surviving beams), in place: the buffers keep
        their addresses, so a captured CUDA graph stays valid. An index of another length (the encoder-decoder
        stepper's `expand`, one source row to its beams) selects new buffers: the row count changes."""
        if index.shape[0] != self.k[0].shape[0]:
            self.k = [buf.index_select(0, index) for buf in self.k]
            self.v = [buf.index_select(0, index) for buf in self.v]
            return
        for buf in (*self.k, *self.v):
            buf.copy_(buf.index_select(0, index))


def build_attention_mask(
    attention_mask: torch.Tensor | None,
    cache_position: torch.Tensor,
    S: int,
    past: int | None = None,
    window: int | None = None,
) -> torch.Tensor | None:
    """The one causal + padding mask: boolean (B or 1, 1, T, S) for SDPA (True = may attend), or None when
    none is needed.

    cache_position (T,): the slot of each query, or (B, T): each row's own (a continuous batch, rows at
    different lengths; the mask is then (B, 1, T, S)); keys are slots [0, S). Query i may attend key j iff
    j <= cache_position[i] (causal) and attention_mask[:, j] is 1 (not padding; also 0 for a slot not yet
    written). attention_mask (B, S) of 1/0, or None when every key is real. `past` is the number of keys before
    the first query when the queries are known to fill the last T slots (an appending forward): then no mask is
    needed without padding (SDPA's is_causal at past 0, nothing at all for one query).

    `window` (sliding-window attention: Mistral, Gemma's local layers) also hides keys j <= cache_position[i]
    - window: each query sees itself and the window - 1 keys before it. Then a mask is always returned (unless
    an appending forward's S <= window: no distance reaches the window). Slots, not position ids, are compared:
    left padding sits before a row's real tokens, so slot distances equal position distances.
    """
    T = cache_position.shape[-1]
    # By position (past None, S maybe symbolic under torch.compile) the window term is always applied: a
    # comparison of S with the window would be a guard, one more compilation.
    windowed = window is not None and (past is None or S > window)
    if attention_mask is None and past is not None and (past == 0 or T == 1) and not windowed:
        return None
    q_pos = cache_position[..., None]  # (T, 1), or (B, T, 1) when each row has its own slots
    k_pos = torch.arange(S, device=cache_position.device)  # (S,)
    mask = k_pos <= q_pos  # (T, S) or (B, T, S)
    if windowed:
        mask = mask & (k_pos > q_pos - window)

    def heads(m: torch.Tensor) -> torch.Tensor:  # (T, S) -> (1, 1, T, S); (B, T, S) -> (B, 1, T, S)
        return m[None, None] if m.dim() == 2 else m[:, None]

    mask = heads(mask)
    if attention_mask is not None:
        keys = attention_mask[:, None, None, :].bool()  # (B, 1, 1, S)
        # A padding query would otherwise attend nothing (softmax of all -inf is NaN): let it see itself.
        mask = (mask & keys) | heads(k_pos == q_pos)
    return mask


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    dropout_p: float,
    scale: float | None = None,
) -> torch.Tensor:
    """PyTorch's fused attention: q (B, n_head, T, hs), k and v (B, n_kv_head, S, hs) -> (B, n_head, T, hs).

    `scale` multiplies q·k (None: 1/sqrt(hs)). `enable_gqa`: each group of n_head / n_kv_head query heads
    shares one k/v head, read in place (no repeat_interleave copy of the cache)."""
    return F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        is_causal=is_causal,
        dropout_p=dropout_p,
        scale=scale,
        enable_gqa=k.shape[1] != q.shape[1],
    )


def one_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q kᵀ · scale) v (scale None: 1/sqrt(head_size)) for one query per row, written as products and sums: q (B, n_head, 1,
    hs), k and v (B, n_kv_head, S, hs), mask (B or 1, 1, 1, S) or None -> (B, n_head, 1, hs).

    Query head h reads key head h // group (GQA, group = n_head / n_kv_head) through a broadcast, not a copy.
    Under `torch.compile` inductor fuses scores, mask, softmax and the weighted sum into one C++ loop nest;
    PyTorch's CPU flash-attention kernel, tuned for long query blocks, spends ~60 µs a call on a single query
    (SmolLM2 decoding: 30 calls, 7% of a step). No dropout: this backend serves decoding only.
    """
    B, nh, _, hs = q.shape
    nkv = k.shape[1]
    q = q.reshape(B, nkv, nh // nkv, 1, hs)  # (B, n_kv_head, group, 1, hs)
    scale = hs**-0.5 if scale is None else scale
    scores = (q * k[:, :, None]).sum(-1) * scale  # (B, n_kv_head, group, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # (B, 1, 1, S) broadcasts over the heads
    p = scores.softmax(-1)
    y = (p[..., None] * v[:, :, None]).sum(-2)  # (B, n_kv_head, group, hs)
    return y.reshape(B, nh, 1, hs)  # (B, n_head, 1, hs): head h = (h // group, h % group)


def softcapped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    dropout_p: float,
    scale: float | None = None,
    softcap: float = 50.0,
) -> torch.Tensor:
    """softmax(cap · tanh(q kᵀ · scale / cap)) v, Gemma-2's attention-logit soft-capping, written out (SDPA
    has no hook between the scores and the softmax). q (B, n_head, T, hs), k/v (B, n_kv_head, S, hs), mask
    (B | 1, 1, T, S) of booleans or None (then `is_causal` says whether the T queries are causal over S = T
    keys) -> (B, n_head, T, hs)."""
    B, nh, T, hs = q.shape
    nkv, S = k.shape[1], k.shape[2]
    if nkv != nh:  # each group of n_head / n_kv_head query heads shares one k/v head
        k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
    scale = hs**-0.5 if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, n_head, T, S)
    scores = torch.tanh(scores / softcap) * softcap
    if mask is None and is_causal:
        pos = torch.arange(S, device=q.device)
        mask = pos[None, :] <= pos[S - T :, None]  # (T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    p = F.dropout(scores.float().softmax(-1), dropout_p).to(q.dtype)
    return p @ v  # (B, n_head, T, hs)


# The attention backends SelfAttention can run, by name (`attn_impl`); "auto" picks one per call.
ATTENTION_BACKENDS = {"sdpa": sdpa_attention, "one_query": one_query_attention}


def pick_attention(attn_impl: str, T: int, device: torch.device, training: bool) -> str:
    """The backend for this call. "one_query": the written-out attention for one-query calls, SDPA for longer
    ones. "auto": "one_query" when compiling a CPU decode step (one query, no dropout: inductor fuses it,
    beating SDPA's CPU kernel), else SDPA (eager, training, GPUs, prompts: one fused kernel serves them best)."""
    if T != 1 or training or attn_impl == "sdpa":
        return "sdpa"
    if attn_impl == "one_query" or (device.type == "cpu" and torch.compiler.is_compiling()):
        return "one_query"
    return "sdpa"


class SelfAttention(nn.Module):
    """Multi-head (or grouped-query) self-attention with an optional rotary position and KV cache.

    `attn_impl` chooses the attention backend: "auto" (default), or one of ATTENTION_BACKENDS.
    Optional steps, each off by default (issue 19's architectures):
    - `qk_norm`: "head" normalises q and k per head before RoPE (Qwen3, Gemma-3), "full" normalises the whole
      q and k projections (OLMo-2); `make_norm(width)` builds each norm;
    - `scale`: the q·k multiplier (Gemma: query_pre_attn_scalar^-1/2); None is 1/sqrt(head_size);
    - `softcap`: cap · tanh(scores / cap) before the softmax (Gemma-2): the "softcap" backend, always.
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
        attn_impl: str = "auto",
        head_size: int | None = None,
        qk_norm: str = "none",
        make_norm: Callable[[int], nn.Module] | None = None,
        scale: float | None = None,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        assert n_head % n_kv_head == 0 and (head_size is not None or C % n_head == 0)
        if attn_impl != "auto" and attn_impl not in ATTENTION_BACKENDS:
            raise ValueError(
                f"unknown attn_impl {attn_impl!r}; use 'auto' or one of {sorted(ATTENTION_BACKENDS)}"
            )
        self.n_head, self.n_kv_head, self.head_size = n_head, n_kv_head, head_size or C // n_head
        hs = self.head_size
        # One matmul for q, k and v: [q (n_head·hs) | k (n_kv_head·hs) | v (n_kv_head·hs)].
        self.qkv = nn.Linear(C, (n_head + 2 * n_kv_head) * hs, bias=qkv_bias)
        self.proj = nn.Linear(n_head * hs, C, bias=proj_bias)
        self.dropout = dropout
        self.attn_impl = attn_impl
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
        cache_position: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). `causal=False` lets every position see every other (an encoder: BERT,
        the Transformer's encoder); `mask` (B or 1, 1, T, S) of booleans then only hides padding.

        With a kv_cache the new keys go to slots `cache_position` (T,) or (B, T) (None: the T slots after
        kv_cache.seq_len) and the queries attend slots [0, S), S being the mask's width (or seq_len + T)."""
        B, T, C = x.shape
        hs, nh, nkv = self.head_size, self.n_head, self.n_kv_head
        qkv = self.qkv(x.reshape(B * T, C))  # (B·T, (n_head + 2·n_kv_head)·hs): a plain 2-D matmul input
        if self.qk_norm == "full":  # OLMo-2: one norm over all heads' q (and k), before the split into heads
            q, k, v = qkv.split([nh * hs, nkv * hs, nkv * hs], dim=-1)
            qkv = torch.cat([self.q_norm(q), self.k_norm(k), v], dim=-1)  # (B·T, (n_head + 2·n_kv_head)·hs)
        qkv = qkv.view(B, T, nh + 2 * nkv, hs).transpose(1, 2)  # (B, n_head + 2·n_kv_head, T, hs)
        qk = qkv[:, : nh + nkv]  # (B, n_head + n_kv_head, T, hs)
        v = qkv[:, nh + nkv :]  # (B, n_kv_head, T, hs)
        if self.qk_norm == "head":  # Qwen3 / Gemma-3: each head's q and k normalised (own norms), before RoPE
            q, k = self.q_norm(qk[:, :nh]), self.k_norm(qk[:, nh:])
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        else:
            if rope is not None:
                qk = apply_rope(qk, *rope)  # queries and keys rotate alike: one call for both
            q, k = qk[:, :nh], qk[:, nh:]  # (B, n_head, T, head_size), (B, n_kv_head, T, head_size)
        S = T
        if kv_cache is not None:
            S = mask.shape[-1] if mask is not None else kv_cache.seq_len + T
            if cache_position is None:  # append after the filled slots
                cache_position = torch.arange(S - T, S, device=x.device)  # (T,)
            k, v = kv_cache.update(layer, k, v, cache_position, S)  # (B, n_kv_head, S, head_size)
        is_causal = causal and mask is None and S == T and T > 1
        dropout_p = self.dropout if self.training else 0.0
        if self.softcap is not None:
            y = softcapped_attention(q, k, v, mask, is_causal, dropout_p, self.scale, self.softcap)
        else:
            impl = pick_attention(self.attn_impl, T, x.device, self.training and self.dropout > 0)
            y = ATTENTION_BACKENDS[impl](
                q, k, v, mask, is_causal=is_causal, dropout_p=dropout_p, scale=self.scale
            )  # (B, n_head, T, head_size)
        y = y.transpose(1, 2).reshape(B * T, nh * hs)  # (B·T, n_head·hs): the matmul gets a plain 2-D input
        return self.proj(y).view(B, T, C)  # (B, T, C)


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
