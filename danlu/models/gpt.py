"""Decoder-only Transformer: GPT-2 style and LLaMA style, chosen by the config.

Notation: B batch, T time, C = n_embd channels, V vocab, n_head query heads, n_kv_head key/value heads,
head_size = C // n_head unless the config sets head_dim (Gemma, Qwen3).

GPT-2 (Radford et al. 2019): learned positions, LayerNorm, GELU MLP, biases, tied input/output embeddings.
LLaMA (Touvron et al. 2023): rotary positions, RMSNorm, SwiGLU MLP, no biases, grouped-query attention
(LLaMA 2, notes 004 §GQA). Both are pre-LN: x + Attn(Norm(x)), then x + MLP(Norm(x)).
Issue 19's families (Qwen3, Mistral, Phi-3, LLaMA-3, OLMo-2, Gemma-2/3) are config fields of this one model,
each an optional step of the one forward (docs/ARCHITECTURE.md, the architectures table).
The model predicts token t+1 from tokens ≤ t: the causal LM objective −Σ log p(x_{t+1} | x_≤t) (notes 003).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from danlu.errors import DanluError
from danlu.models.config_checks import PresetConfig, check_fields
from danlu.nn.attention import KVCache, SelfAttention, build_attention_mask
from danlu.nn.layers import GATED_MLPS, NORMS, make_mlp, make_norm
from danlu.nn.position import INITIAL_POSITIONS, grown_length, rope_cache, rope_scaling_problems

MLPS = ("gelu_tanh", "gelu", "relu", "swiglu", *[k for k in GATED_MLPS if k != "swiglu"])


@dataclass
class GPTConfig(PresetConfig):
    vocab_size: int = 4096
    block_size: int = 256  # the longest context the model can see (the learned positions' table length)
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # grouped-query attention; None means n_head (plain multi-head)
    n_embd: int = 128
    intermediate_size: int | None = None  # MLP width; None means 4·C (gpt2) or LLaMA's 8/3·C rounded
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu_tanh"  # "gelu_tanh" | "gelu" | "relu" | "swiglu"
    position: str = "learned"  # "learned" | "rope"
    rope_theta: float = 10000.0
    bias: bool = True  # biases in linear layers and LayerNorm
    qkv_bias: bool | None = None  # Qwen2 keeps q/k/v biases with bias=False; None means `bias`
    tie_embeddings: bool = True
    dropout: float = 0.0
    # Issue 19's architectures (docs/ARCHITECTURE.md, the architectures table): each off by default.
    head_dim: int | None = None  # per-head width when not n_embd // n_head (Gemma, Qwen3)
    qk_norm: str = "none"  # "head": norm each head's q, k before RoPE (Qwen3); "full": whole q, k (OLMo-2)
    norm_placement: str = "pre"  # "pre": x + f(N(x)); "post": x + N(f(x)) (OLMo-2); "sandwich": both (Gemma)
    embedding_scale: float | None = None  # token embeddings times this (Gemma: sqrt(n_embd))
    query_scale: float | None = None  # q·k multiplier; None: 1/sqrt(head_size) (Gemma: q_pre_attn_scalar^-½)
    attn_logit_softcap: float | None = None  # cap·tanh(scores/cap) before the softmax (Gemma-2)
    final_logit_softcap: float | None = None  # cap·tanh(logits/cap) on the LM head's output (Gemma-2)
    sliding_window: int | None = None  # a query sees itself and window - 1 keys before it (Mistral, Gemma)
    layer_types: list[str] | None = None  # "full" | "sliding" per layer; None: all sliding if sliding_window
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "linear" | "llama3" | "yarn", ...}
    rope_local_theta: float | None = None  # RoPE base of the sliding layers, when it differs (Gemma-3)
    hf_model_type: str | None = None  # the HF family it was loaded as (export tells Phi-3 from Mistral by it)

    preset_kind, config_name = "model", "GPT config"  # PresetConfig's error messages

    def __post_init__(self) -> None:
        check_fields(self, self.config_name)  # types and ranges first: the checks below do arithmetic on them
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.qkv_bias is None:
            self.qkv_bias = self.bias
        if self.intermediate_size is None:
            if self.mlp == "swiglu":  # 2/3 of 4C keeps the parameter count of a 4C MLP, rounded up to 32
                self.intermediate_size = 32 * math.ceil(8 * self.n_embd / 3 / 32)
            else:
                self.intermediate_size = 4 * self.n_embd
        problems = []  # sizes below 1 were refused by check_fields (config_checks.RANGES)
        if self.n_embd % self.n_head and self.head_dim is None:
            problems.append(
                f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}; set head_dim to decouple them"
            )
        if self.n_head % self.n_kv_head:
            problems.append(f"n_head {self.n_head} is not divisible by n_kv_head {self.n_kv_head}")
        if self.position == "rope" and (self.head_dim or self.n_embd // self.n_head) % 2:
            problems.append(f"RoPE needs an even head_size, got {self.head_size}")
        if self.position not in ("learned", "rope"):
            problems.append(f"position must be 'learned' or 'rope', got {self.position!r}")
        if self.norm not in NORMS:
            problems.append(f"norm must be one of {list(NORMS)}, got {self.norm!r}")
        if self.mlp not in MLPS:
            problems.append(f"mlp must be one of {list(MLPS)}, got {self.mlp!r}")
        problems += architecture_problems(self)
        if self.n_kv_head > self.n_head:
            problems.append(f"n_kv_head {self.n_kv_head} is more than n_head {self.n_head}")
        if problems:
            raise DanluError(f"bad {self.config_name}: " + "; ".join(problems))

    @property
    def head_size(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    def is_sliding(self, layer: int) -> bool:
        """Whether `layer` attends through the sliding window (else it sees the whole context)."""
        if self.sliding_window is None:
            return False
        return self.layer_types is None or self.layer_types[layer] == "sliding"


_GPT2 = dict(norm="layernorm", norm_eps=1e-5, mlp="gelu_tanh", position="learned", bias=True)
_LLAMA = dict(norm="rmsnorm", norm_eps=1e-5, mlp="swiglu", position="rope", bias=False, tie_embeddings=False)

# The tiny LLaMA-style shape every *-tiny family preset shares (4 layers of 128 channels, GQA 4:2).
_TINY_LLAMA = dict(n_layer=4, n_head=4, n_kv_head=2, n_embd=128, block_size=256, tie_embeddings=True)

# Named presets: the tiny ones train on 2 CPU cores in minutes; the others have real models' shapes.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-tiny": dict(_GPT2, n_layer=4, n_head=4, n_embd=128, block_size=256),
    "llama-tiny": dict(_LLAMA, **_TINY_LLAMA),
    # Issue 19's families at the tiny size (docs/ARCHITECTURE.md table): the same shapes, their config fields.
    "qwen3-tiny": dict(_LLAMA, **_TINY_LLAMA, qk_norm="head"),
    "olmo2-tiny": dict(_LLAMA, **_TINY_LLAMA, qk_norm="full", norm_placement="post"),
    "gemma2-tiny": dict(
        _LLAMA,
        **_TINY_LLAMA,
        norm="rmsnorm_1p",
        mlp="geglu_tanh",
        norm_placement="sandwich",
        norm_eps=1e-6,
        head_dim=32,
        embedding_scale=128**0.5,
        query_scale=32**-0.5,
        attn_logit_softcap=50.0,
        final_logit_softcap=30.0,
        sliding_window=64,
        layer_types=["sliding", "full"] * 2,
    ),
    "gpt2-small": dict(_GPT2, n_layer=6, n_head=6, n_embd=384, block_size=512),
    "gpt2-124m": dict(_GPT2, vocab_size=50257, n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "smollm2-135m": dict(
        _LLAMA,
        vocab_size=49152,
        n_layer=30,
        n_head=9,
        n_kv_head=3,
        n_embd=576,
        intermediate_size=1536,
        block_size=8192,
        rope_theta=100000.0,
        tie_embeddings=True,
    ),
}


@dataclass
class GPTOutput:
    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor | None = None


class Block(nn.Module):
    """One Transformer block. Pre-LN (the default): x + Attn(Norm(x)), then x + MLP(Norm(x)).

    norm_placement "post" (OLMo-2) normalises each sublayer's output instead, x + Norm(Attn(x)); "sandwich"
    (Gemma-2/3) does both, x + Norm(Attn(Norm(x))). The output norms are `post_attn_norm` / `post_mlp_norm`.
    """

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()

        def norm(width: int = cfg.n_embd) -> nn.Module:
            return make_norm(cfg.norm, width, cfg.norm_eps, bias=cfg.bias)

        pre, post = cfg.norm_placement != "post", cfg.norm_placement != "pre"
        self.norm1 = norm() if pre else nn.Identity()
        self.attn = SelfAttention(
            cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.qkv_bias, cfg.bias, cfg.dropout, head_size=cfg.head_size,
            qk_norm=cfg.qk_norm, make_norm=norm, scale=cfg.query_scale, softcap=cfg.attn_logit_softcap,
        )  # fmt: skip
        self.norm2 = norm() if pre else nn.Identity()
        self.mlp = make_mlp(cfg.mlp, cfg.n_embd, cfg.intermediate_size, cfg.bias)
        self.post_attn_norm = norm() if post else None
        self.post_mlp_norm = norm() if post else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        kv_cache: KVCache | None,
        layer: int,
        cache_position: torch.Tensor,
    ) -> torch.Tensor:
        """x (B·T, C), the residual stream kept 2-D, -> (B·T, C); cache_position (T,) or (B, T) the new tokens' cache slots.

        Why 2-D: a (1, 1, C) stream reached the matmuls of a compiled CPU decode step as zero-stride views that
        ATen copies first (4% of a step, docs/BENCHMARKS.md)."""
        (BT, C), T = x.shape, cache_position.shape[-1]
        h = self.norm1(x).view(BT // T, T, C)  # (B, T, C)
        h = self.attn(h, mask, rope, kv_cache, layer, cache_position=cache_position).view(BT, C)  # (B·T, C)
        if self.post_attn_norm is not None:
            h = self.post_attn_norm(h)
        x = x + self.drop(h)  # (B·T, C)
        h = self.mlp(self.norm2(x))
        if self.post_mlp_norm is not None:
            h = self.post_mlp_norm(h)
        return x + self.drop(h)


class GPT(nn.Module):
    """A decoder-only language model. `forward(input_ids, attention_mask, labels, kv_cache)` -> GPTOutput."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.position == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # one matrix both embeds and un-embeds (Press & Wolf 2017)
        if cfg.position == "rope":  # (L, head_size) each, L <= block_size grown on demand (ensure_positions)
            for name, table in rope_tables(cfg, min(cfg.block_size, INITIAL_POSITIONS)).items():
                self.register_buffer(name, table, persistent=False)
        self.apply(self._init_weights)
        # GPT-2 scales the residual projections by 1/sqrt(2·n_layer): each block adds two to the residual stream.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def init_buffers(self) -> None:
        """Rebuild the non-persistent RoPE tables at their initial length (after building on the meta device)."""
        if self.config.position == "rope":
            cfg = self.config
            for name, table in rope_tables(cfg, min(cfg.block_size, INITIAL_POSITIONS)).items():
                setattr(self, name, table)

    def ensure_positions(self, n: int) -> None:
        """Make the RoPE tables cover positions [0, n); n beyond the model's context is a DanluError.

        Called by every forward (and by the compiled decode path before it starts): the table grows here,
        outside any compiled region, so a long context costs memory only once it is used.
        """
        cfg = self.config
        if n > cfg.block_size:
            raise DanluError(
                f"sequence of {n} tokens is longer than the model's context block_size="
                f"{cfg.block_size}; shorten the input or use a model with a longer context"
            )
        if self.wpe is not None or n <= self.rope_cos.shape[0]:
            return
        length = grown_length(n, self.rope_cos.shape[0], cfg.block_size)
        like = self.rope_cos  # same device and dtype as the table it replaces (e.g. after .to(bfloat16))
        for name, table in rope_tables(cfg, length).items():
            setattr(self, name, table.to(like.device, like.dtype))

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.wpe is not None:
            n -= self.wpe.weight.numel()
        return n

    def new_kv_cache(self, B: int, max_len: int | None = None) -> KVCache:
        """An empty cache for B rows and max_len slots; the RoPE tables are grown to cover it here, so a forward
        that writes by cache_position (a compiled decode step) never has to grow them."""
        cfg, p = self.config, self.wte.weight
        max_len = max_len or cfg.block_size
        self.ensure_positions(max_len)
        return KVCache(cfg.n_layer, B, cfg.n_kv_head, max_len, cfg.head_size, p.device, p.dtype)

    def set_attn_impl(self, attn_impl: str) -> None:
        """Choose every layer's attention backend: "auto", "sdpa" or "one_query" (nn/attention.py)."""
        for block in self.blocks:
            block.attn.attn_impl = attn_impl

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache_position: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> GPTOutput:
        """The one forward, for training, prefill and decoding (compiled or not).

        input_ids (B, T); attention_mask (B, S) of 1/0 over the keys attended (S = past + T when appending to
        a cache); labels (B, T) aligned with input_ids (shifted here, -100 ignored); kv_cache filled in place,
        at slots cache_position (T,) when given (see `hidden_states`). `inputs_embeds` (B, T, C) replaces the
        token embeddings (P-tuning prepends learned virtual tokens). logits_to_keep = k > 0 un-embeds only the
        last k positions (prefill needs one: the (T, V) product of a long prompt is wasted work).
        Returns logits (B, T or k, V) and the mean loss."""
        if labels is not None and logits_to_keep:
            raise DanluError("labels need the logits of every position; leave logits_to_keep at 0 to train")
        x = self.hidden_states(
            input_ids, attention_mask, kv_cache, position_ids, inputs_embeds, cache_position
        )
        if logits_to_keep:
            x = x[:, -logits_to_keep:]  # (B, k, C)
        logits = self.lm_head(x)  # (B, T or k, V)
        if self.config.final_logit_softcap is not None:  # Gemma-2: logits bounded to (-cap, cap)
            cap = self.config.final_logit_softcap
            logits = torch.tanh(logits / cap) * cap
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels)
        return GPTOutput(logits=logits, loss=loss)

    def hidden_states(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache_position: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final-norm hidden states (B, T, C), before the LM head: what a reward or value head reads.

        Two ways to use a kv_cache, one code path:
        - append (cache_position None): the T tokens go to the slots after kv_cache.seq_len, which then
          advances; attention_mask, if given, covers those S = seq_len + T slots.
        - by position (cache_position (T,) long, or (B, T): each row its own slots, a continuous batch whose
          rows sit at different lengths): the tokens go to those slots and kv_cache.seq_len is left to
          the caller. Shapes are then the same every step (torch.compile, CUDA graphs): the keys attended are
          slots [0, S) with S = attention_mask.shape[1] (or the whole cache without a mask, causal by slot).
        position_ids (B or 1, T) default to the slots; left-padded rows pass their own (padding not counted).
        """
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        cfg = self.config
        if cfg.embedding_scale is not None:  # Gemma rounds sqrt(C) to the activations' dtype first
            x = x * torch.tensor(cfg.embedding_scale, dtype=x.dtype)
        T = x.shape[1]
        past: int | None = None
        if kv_cache is not None and cache_position is not None:
            S = attention_mask.shape[1] if attention_mask is not None else kv_cache.max_len
        else:  # no cache (training) or appending: positions are known here as Python ints
            past = kv_cache.seq_len if kv_cache is not None else 0
            S = past + T
            self.ensure_positions(S)
            if kv_cache is not None:
                kv_cache.check_room(T)
            if attention_mask is not None and attention_mask.shape[1] != S:
                raise DanluError(
                    f"attention_mask covers {attention_mask.shape[1]} positions but the forward attends {S} "
                    f"({past} cached + {T} new); pass a mask over the cached and the new tokens"
                )
            cache_position = torch.arange(past, S, device=x.device)  # (T,)
        if position_ids is None:
            position_ids = cache_position if cache_position.dim() == 2 else cache_position[None]  # (B|1, T)
        rope = local_rope = None
        if self.wpe is not None:
            x = x + self.wpe(position_ids)
        else:
            rope = (
                self.rope_cos[position_ids][:, None],
                self.rope_sin[position_ids][:, None],
            )  # (B|1, 1, T, hs)
            local_rope = rope
            if cfg.rope_local_theta is not None:  # Gemma-3: the sliding layers rotate with their own base
                local_rope = (
                    self.rope_cos_local[position_ids][:, None],
                    self.rope_sin_local[position_ids][:, None],
                )
        B, C = x.shape[0], x.shape[2]
        x = self.drop(x).reshape(B * T, C)  # (B·T, C): the residual stream is kept 2-D (see Block.forward)
        mask = build_attention_mask(attention_mask, cache_position, S, past)  # (B|1, 1, T, S) or None
        local_mask = None  # the sliding layers' mask (Mistral, Gemma), see build_attention_mask's `window`
        if cfg.sliding_window is not None:
            local_mask = build_attention_mask(attention_mask, cache_position, S, past, cfg.sliding_window)
        for i, block in enumerate(self.blocks):
            if cfg.is_sliding(i):
                x = block(x, local_mask, local_rope, kv_cache, i, cache_position)
            else:
                x = block(x, mask, rope, kv_cache, i, cache_position)
        if kv_cache is not None and past is not None:
            kv_cache.advance(T)
        return self.norm_f(x).view(B, T, C)  # (B, T, C)


def rope_tables(cfg: GPTConfig, length: int) -> dict[str, torch.Tensor]:
    """The RoPE cos/sin buffers (length, head_size) a GPT holds: `rope_cos`, `rope_sin` (with the config's
    rope_scaling), plus `rope_cos_local`, `rope_sin_local` for the sliding layers when rope_local_theta is set
    (Gemma-3: unscaled, their own base)."""
    cos, sin = rope_cache(length, cfg.head_size, cfg.rope_theta, cfg.rope_scaling)
    tables = {"rope_cos": cos, "rope_sin": sin}
    if cfg.rope_local_theta is not None:
        tables["rope_cos_local"], tables["rope_sin_local"] = rope_cache(
            length, cfg.head_size, cfg.rope_local_theta
        )
    return tables


def architecture_problems(cfg: GPTConfig) -> list[str]:
    """Why the issue-19 fields of `cfg` do not fit together, as actionable messages ([] when they do)."""
    problems = []
    if cfg.qk_norm not in ("none", "head", "full"):
        problems.append(f"qk_norm must be 'none', 'head' or 'full', got {cfg.qk_norm!r}")
    if cfg.norm_placement not in ("pre", "post", "sandwich"):
        problems.append(f"norm_placement must be 'pre', 'post' or 'sandwich', got {cfg.norm_placement!r}")
    if cfg.layer_types is not None:
        if not isinstance(cfg.layer_types, list) or len(cfg.layer_types) != cfg.n_layer:
            problems.append(
                f"layer_types must be a list of n_layer={cfg.n_layer} entries, got {cfg.layer_types!r}"
            )
        elif any(t not in ("full", "sliding") for t in cfg.layer_types):
            problems.append(f"layer_types entries must be 'full' or 'sliding', got {cfg.layer_types!r}")
        elif "sliding" in cfg.layer_types and cfg.sliding_window is None:
            problems.append("layer_types names sliding layers but sliding_window is not set; set its width")
    if cfg.rope_scaling is not None:
        if cfg.position != "rope":
            problems.append("rope_scaling needs position='rope'")
        problems += rope_scaling_problems(cfg.rope_scaling)
    if cfg.rope_local_theta is not None and (cfg.position != "rope" or cfg.sliding_window is None):
        problems.append(
            "rope_local_theta is the RoPE base of sliding layers: it needs position='rope' and a sliding_window"
        )
    return problems


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting labels[t+1] from position t; -100 labels are ignored.

    The labels are shifted (not the logits), so no (B, T-1, V) copy of the logits is made.
    """
    shifted = F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, T)
    return F.cross_entropy(logits.flatten(0, 1).float(), shifted.flatten(), ignore_index=-100)
