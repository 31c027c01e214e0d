"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al. 2017; notes 003). Its decoding
(greedy and beam search translation) is the one engine's: `danlu/generate/encoder_decoder.py` steps this model
through `encode`, `memory_kv` and `decode` with a KV cache.

Notation: B batch, S source length, T target length, C = d_model channels, V vocab, n_head heads.

- one shared source/target vocabulary: one embedding matrix feeds both stacks and un-embeds the output (§3.4),
  embeddings multiplied by sqrt(C) before the sinusoidal positions are added (§3.4, §3.5);
- encoder: N blocks of bidirectional self-attention + ReLU FFN; decoder: N blocks of causal self-attention,
  cross-attention over the encoder output and the FFN (§3.1, §3.2.3);
- Add & Norm after each sublayer (post-LN, the paper) or before it (pre-LN, `norm_first=True`, which then needs
  a final LayerNorm after each stack);
- teacher forcing: the decoder reads the target shifted right behind a start token and predicts it (§5), with
  label-smoothed cross-entropy (eps = 0.1, §5.4).
The same model does BART-style denoising (Lewis et al. 2020): source = a corrupted text, target = the text
(danlu/train/objectives.py has the noise functions).
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
from danlu.nn.attention import KVCache, padding_mask
from danlu.nn.blocks import DecoderBlock, EncoderBlock
from danlu.nn.position import INITIAL_POSITIONS, grown_length, sinusoidal_positions


@dataclass
class Seq2SeqConfig(PresetConfig):
    vocab_size: int = 2048
    block_size: int = 128  # longest source or target (the sinusoid table grows to the longest one run)
    n_layer: int = 3  # encoder blocks
    n_decoder_layer: int | None = None  # None: n_layer
    n_head: int = 4
    n_embd: int = 128  # d_model
    intermediate_size: int | None = None  # d_ff; None: 4·C (the paper: 512 -> 2048)
    activation: str = "relu"
    norm_first: bool = False  # False: post-LN as in the paper; True: pre-LN
    norm_eps: float = 1e-5
    dropout: float = 0.1
    label_smoothing: float = 0.1
    pad_token_id: int = 0
    bos_token_id: int = 1  # the decoder's start token
    eos_token_id: int = 2

    preset_kind, config_name = "seq2seq", "seq2seq config"  # PresetConfig's error messages

    def __post_init__(self) -> None:
        check_fields(self, self.config_name)  # types and ranges first: the checks below do arithmetic on them
        if self.n_decoder_layer is None:
            self.n_decoder_layer = self.n_layer
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.n_embd
        problems = []  # sizes below 1 were refused by check_fields (config_checks.RANGES)
        if self.n_embd % self.n_head:
            problems.append(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.n_embd % 2:
            problems.append(f"sinusoidal positions need an even n_embd, got {self.n_embd}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                problems.append(
                    f"{name} {getattr(self, name)} is outside the vocabulary (size {self.vocab_size})"
                )
        if problems:
            raise DanluError(f"bad {self.config_name}: " + "; ".join(problems))

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


PRESETS: dict[str, dict[str, Any]] = {
    "transformer-tiny": dict(n_layer=3, n_head=4, n_embd=128, dropout=0.1),  # the world, 2 CPU cores, minutes
    "transformer-base": dict(n_layer=6, n_head=8, n_embd=512, block_size=512),  # the paper's base model
}


@dataclass
class Seq2SeqOutput:
    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor | None = None


class Transformer(nn.Module):
    """Encoder-decoder. `forward(input_ids, attention_mask, decoder_input_ids, labels)` -> Seq2SeqOutput."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = cfg
        C, H = cfg.n_embd, cfg.intermediate_size
        self.embed = nn.Embedding(cfg.vocab_size, C, padding_idx=cfg.pad_token_id)
        self.register_buffer(
            "positions", sinusoidal_positions(min(cfg.block_size, INITIAL_POSITIONS), C), persistent=False
        )
        self.drop = nn.Dropout(cfg.dropout)
        args = (C, cfg.n_head, H, cfg.activation, cfg.norm_first, cfg.norm_eps, cfg.dropout)
        self.encoder = nn.ModuleList(EncoderBlock(*args) for _ in range(cfg.n_layer))
        self.decoder = nn.ModuleList(DecoderBlock(*args) for _ in range(cfg.n_decoder_layer))
        # Pre-LN leaves the residual stream un-normalised: one LayerNorm closes each stack (Xiong et al. 2020).
        self.encoder_norm = nn.LayerNorm(C, eps=cfg.norm_eps) if cfg.norm_first else None
        self.decoder_norm = nn.LayerNorm(C, eps=cfg.norm_eps) if cfg.norm_first else None
        self.apply(self._init_weights)

    def init_buffers(self) -> None:
        """Rebuild the non-persistent position table (after building the model on the meta device)."""
        self.positions = sinusoidal_positions(
            min(self.config.block_size, INITIAL_POSITIONS), self.config.n_embd
        )

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Xavier-uniform matrices as the paper's reference code; N(0, C^-1/2) embeddings, since they are
        # multiplied by sqrt(C) and shared with the output layer.
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=module.embedding_dim**-0.5)

    def _embed(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        T = ids.shape[1]
        if start + T > self.config.block_size:
            raise DanluError(
                f"a sequence of {start + T} tokens is longer than the model's block_size={self.config.block_size}; "
                "shorten it or use a model with a larger block_size"
            )
        if start + T > self.positions.shape[0]:  # grow the table (lazily sized: position.py)
            n = grown_length(start + T, self.positions.shape[0], self.config.block_size)
            pe = sinusoidal_positions(n, self.config.n_embd)
            self.positions = pe.to(self.positions.device, self.positions.dtype)
        x = self.embed(ids) * math.sqrt(self.config.n_embd) + self.positions[start : start + T]  # (B, T, C)
        return self.drop(x)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Source ids (B, S) -> encoder output ("memory") (B, S, C)."""
        x = self._embed(input_ids)
        mask = padding_mask(attention_mask)  # (B, 1, 1, S)
        for block in self.encoder:
            x = block(x, mask)
        return self.encoder_norm(x) if self.encoder_norm is not None else x

    def memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every decoder layer's cross-attention keys and values of the memory, computed once per source."""
        return [block.cross.memory_kv(memory) for block in self.decoder]

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        memory_kv: list[tuple[torch.Tensor, torch.Tensor]],
        memory_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Target ids (B, T) (the new ones only, when a KV cache holds the past) -> logits (B, T, V)."""
        past = kv_cache.seq_len if kv_cache is not None else 0
        x = self._embed(decoder_input_ids, start=past)
        for i, block in enumerate(self.decoder):
            x = block(x, memory_kv[i], memory_mask, kv_cache, i)
        if kv_cache is not None:
            kv_cache.advance(decoder_input_ids.shape[1])
        if self.decoder_norm is not None:
            x = self.decoder_norm(x)
        return F.linear(x, self.embed.weight)  # (B, T, V), tied output projection (§3.4)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> Seq2SeqOutput:
        """input_ids (B, S) source; labels (B, T) target ids ending with EOS, -100 (or pad) where ignored.

        Teacher forcing: without decoder_input_ids, the decoder reads [BOS] + labels[:-1] (labels shifted right).
        """
        if decoder_input_ids is None:
            if labels is None:
                raise DanluError("give decoder_input_ids or labels (the target) to run the decoder")
            decoder_input_ids = shift_right(labels, self.config.bos_token_id, self.config.pad_token_id)
        memory = self.encode(input_ids, attention_mask)
        logits = self.decode(decoder_input_ids, self.memory_kv(memory), padding_mask(attention_mask))
        loss = None
        if labels is not None:
            target = labels.masked_fill(labels == self.config.pad_token_id, -100)
            loss = F.cross_entropy(
                logits.flatten(0, 1).float(),
                target.flatten(),
                ignore_index=-100,
                label_smoothing=self.config.label_smoothing if self.training else 0.0,
            )
        return Seq2SeqOutput(logits=logits, loss=loss)

    def new_kv_cache(self, B: int, max_len: int) -> KVCache:
        cfg, p = self.config, self.embed.weight
        return KVCache(cfg.n_decoder_layer, B, cfg.n_head, max_len, cfg.head_size, p.device, p.dtype)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """[BOS] + labels[:, :-1], ignored (-100) labels read as padding. (B, T) -> (B, T)."""
    shifted = labels.new_full(labels.shape, pad_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = start_id
    return shifted.masked_fill(shifted == -100, pad_id)
