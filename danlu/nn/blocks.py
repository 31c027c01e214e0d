"""Encoder and decoder blocks of the Transformer (Vaswani et al. 2017), shared by BERT and the seq2seq model.

Notation: B batch, T target (or encoder) length, S source length, C channels.

Each sublayer is wrapped in "Add & Norm" (notes 003 §Add & Norm). Post-LN, the paper's and BERT's order:
    x = Norm(x + Dropout(Sublayer(x)))
Pre-LN (Xiong et al. 2020; GPT-2), which trains without a long warmup and needs a final norm after the stack:
    x = x + Dropout(Sublayer(Norm(x)))
"""

from __future__ import annotations

import torch
from torch import nn

from danlu.nn.attention import CrossAttention, KVCache, SelfAttention
from danlu.nn.layers import MLP


class EncoderBlock(nn.Module):
    """Bidirectional self-attention, then the position-wise FFN; post-LN unless `norm_first`."""

    def __init__(
        self,
        C: int,
        n_head: int,
        hidden: int,
        activation: str = "relu",
        norm_first: bool = False,
        norm_eps: float = 1e-5,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attn = SelfAttention(C, n_head, n_head, qkv_bias=True, proj_bias=True, dropout=dropout)
        self.norm1 = nn.LayerNorm(C, eps=norm_eps)
        self.mlp = MLP(C, hidden, activation=activation, bias=True)
        self.norm2 = nn.LayerNorm(C, eps=norm_eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C); mask (B, 1, 1, T) hides padded keys. -> (B, T, C)."""
        if self.norm_first:
            x = x + self.drop(self.attn(self.norm1(x), mask, causal=False))
            return x + self.drop(self.mlp(self.norm2(x)))
        x = self.norm1(x + self.drop(self.attn(x, mask, causal=False)))
        return self.norm2(x + self.drop(self.mlp(x)))


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention over the encoder output, then the FFN (the paper's decoder layer)."""

    def __init__(
        self,
        C: int,
        n_head: int,
        hidden: int,
        activation: str = "relu",
        norm_first: bool = False,
        norm_eps: float = 1e-5,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attn = SelfAttention(C, n_head, n_head, qkv_bias=True, proj_bias=True, dropout=dropout)
        self.norm1 = nn.LayerNorm(C, eps=norm_eps)
        self.cross = CrossAttention(C, n_head, bias=True, dropout=dropout)
        self.norm2 = nn.LayerNorm(C, eps=norm_eps)
        self.mlp = MLP(C, hidden, activation=activation, bias=True)
        self.norm3 = nn.LayerNorm(C, eps=norm_eps)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        memory_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """x (B, T, C) decoder states; memory_kv from `self.cross.memory_kv(encoder output)`. -> (B, T, C).

        The decoder's own padding sits after its real tokens (right padding), so the causal mask alone keeps
        every real position from seeing it."""
        d = self.drop
        if self.norm_first:
            x = x + d(self.attn(self.norm1(x), None, None, kv_cache, layer))
            x = x + d(self.cross(self.norm2(x), memory_kv, memory_mask))
            return x + d(self.mlp(self.norm3(x)))
        x = self.norm1(x + d(self.attn(x, None, None, kv_cache, layer)))
        x = self.norm2(x + d(self.cross(x, memory_kv, memory_mask)))
        return self.norm3(x + d(self.mlp(x)))
