"""BERT (Devlin et al. 2019): a bidirectional Transformer encoder, pretrained by masked language modelling (MLM)
and next-sentence prediction (NSP), then fine-tuned with a small head (notes 005 §BERT).

Notation: B batch, T time (sequence length), C = n_embd channels, V vocab, n_head heads.

Input = token embedding + learned position embedding + segment (token type) embedding, then LayerNorm and
dropout; then post-LN encoder blocks with GELU FFNs. The pooled output is tanh(W h_[CLS] + b).
Heads:
- MLM: h -> GELU(W h) -> LayerNorm -> (tied) word embeddings + bias, predicting the masked tokens;
- NSP: pooled -> 2 logits (0: B follows A, 1: B is a random sentence; Hugging Face's convention);
- sequence classification: pooled -> dropout -> num_labels logits;
- sentence embeddings: the mean of the last hidden states over real tokens (Reimers & Gurevych 2019),
  L2-normalised, as sentence-transformers' all-MiniLM-L6-v2 does.
The classes mirror Hugging Face's (BertModel, BertForPreTraining, BertForSequenceClassification) so their
checkpoints map one to one (danlu/models/hf_bert.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from danlu.errors import DanluError
from danlu.models.config_checks import PresetConfig, check_fields
from danlu.nn.attention import padding_mask
from danlu.nn.blocks import EncoderBlock
from danlu.nn.layers import ACTIVATIONS


@dataclass
class BertConfig(PresetConfig):
    vocab_size: int = 30522
    block_size: int = 512  # max_position_embeddings
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    intermediate_size: int | None = None  # None: 4·C
    type_vocab_size: int = 2
    activation: str = "gelu"
    norm_eps: float = 1e-12
    dropout: float = 0.1
    pad_token_id: int = 0
    with_nsp: bool = (
        True  # BertForPreTraining's NSP head (off for MLM-only checkpoints such as BertForMaskedLM)
    )
    num_labels: int = 2  # BertForSequenceClassification
    id2label: dict[str, str] | None = None  # class names, keyed by str(id) as in Hugging Face's config.json

    preset_kind, config_name = "BERT", "BERT config"  # PresetConfig's error messages

    def __post_init__(self) -> None:
        check_fields(self, self.config_name)  # types and ranges first: the checks below do arithmetic on them
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.n_embd
        problems = []  # sizes below 1 were refused by check_fields (config_checks.RANGES)
        if self.n_embd % self.n_head:
            problems.append(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if problems:
            raise DanluError(f"bad {self.config_name}: " + "; ".join(problems))


PRESETS: dict[str, dict[str, Any]] = {
    "bert-tiny": dict(n_layer=2, n_head=4, n_embd=128, block_size=128),  # trains on the world on 2 CPU cores
    "minilm-l6": dict(n_layer=6, n_head=12, n_embd=384, intermediate_size=1536),  # all-MiniLM-L6-v2's shape
    "bert-base": dict(n_layer=12, n_head=12, n_embd=768),
}


@dataclass
class BertOutput:
    hidden_states: torch.Tensor  # (B, T, C), the last layer
    pooled: torch.Tensor | None = None  # (B, C), tanh(W h_[CLS] + b)


@dataclass
class BertPreTrainingOutput:
    logits: torch.Tensor  # (B, T, V) MLM logits
    nsp_logits: torch.Tensor | None = None  # (B, 2)
    loss: torch.Tensor | None = None  # mlm_loss + nsp_loss (those given)
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None


@dataclass
class ClassifierOutput:
    logits: torch.Tensor  # (B, num_labels)
    loss: torch.Tensor | None = None


class BertModel(nn.Module):
    """Embeddings + encoder (+ pooler). `forward(input_ids, attention_mask, token_type_ids)` -> BertOutput."""

    def __init__(self, cfg: BertConfig, add_pooler: bool = True) -> None:
        super().__init__()
        self.config = cfg
        C = cfg.n_embd
        self.wte = nn.Embedding(cfg.vocab_size, C, padding_idx=cfg.pad_token_id)
        self.wpe = nn.Embedding(cfg.block_size, C)
        self.wtt = nn.Embedding(cfg.type_vocab_size, C)  # segment A / B
        self.emb_norm = nn.LayerNorm(C, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            EncoderBlock(
                C, cfg.n_head, cfg.intermediate_size, cfg.activation, False, cfg.norm_eps, cfg.dropout
            )
            for _ in range(cfg.n_layer)
        )
        self.pooler = nn.Linear(C, C) if add_pooler else None
        self.apply(init_bert_weights)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> BertOutput:
        """input_ids (B, T); attention_mask (B, T) 1 real / 0 padding; token_type_ids (B, T) 0 for A, 1 for B."""
        B, T = input_ids.shape
        if T > self.config.block_size:
            raise DanluError(
                f"sequence of {T} tokens is longer than the model's {self.config.block_size} positions; truncate it"
            )
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device).unsqueeze(0)  # (1, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.wte(input_ids) + self.wpe(position_ids) + self.wtt(token_type_ids)  # (B, T, C)
        x = self.drop(self.emb_norm(x))
        mask = padding_mask(attention_mask)  # (B, 1, 1, T)
        for block in self.blocks:
            x = block(x, mask)
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None  # (B, C)
        return BertOutput(hidden_states=x, pooled=pooled)


def init_bert_weights(module: nn.Module) -> None:
    """N(0, 0.02) weights, zero biases, unit LayerNorms (BERT's initializer_range)."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()


class BertForPreTraining(nn.Module):
    """BERT with the MLM head (and the NSP head when `config.with_nsp`)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.bert = BertModel(cfg)
        C = cfg.n_embd
        self.mlm_dense = nn.Linear(C, C)
        self.mlm_norm = nn.LayerNorm(C, eps=cfg.norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.nsp = nn.Linear(C, 2) if cfg.with_nsp else None
        self.apply(init_bert_weights)
        self.act = ACTIVATIONS[cfg.activation]

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., V): transform, then un-embed with the tied word embeddings (Press & Wolf 2017)."""
        h = self.mlm_norm(self.act(self.mlm_dense(hidden)))
        return F.linear(h, self.bert.wte.weight, self.mlm_bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
    ) -> BertPreTrainingOutput:
        """labels (B, T): the original ids at masked positions, -100 elsewhere; next_sentence_label (B,)."""
        out = self.bert(input_ids, attention_mask, token_type_ids)
        logits = self.mlm_logits(out.hidden_states)  # (B, T, V)
        nsp_logits = self.nsp(out.pooled) if self.nsp is not None else None  # (B, 2)
        mlm_loss = nsp_loss = None
        if labels is not None:
            mlm_loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        if next_sentence_label is not None and nsp_logits is not None:
            nsp_loss = F.cross_entropy(nsp_logits.float(), next_sentence_label)
        losses = [x for x in (mlm_loss, nsp_loss) if x is not None]
        loss = sum(losses) if losses else None
        return BertPreTrainingOutput(logits, nsp_logits, loss, mlm_loss, nsp_loss)


class BertForSequenceClassification(nn.Module):
    """BERT with a linear classifier on the pooled [CLS] state (Devlin et al. 2019, §4.1)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        if cfg.num_labels < 1:
            raise DanluError(f"a classifier needs num_labels >= 1, got {cfg.num_labels}")
        self.config = cfg
        self.bert = BertModel(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.n_embd, cfg.num_labels)
        self.apply(init_bert_weights)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ClassifierOutput:
        """labels (B,) class ids. Returns logits (B, num_labels) and the mean cross-entropy."""
        pooled = self.bert(input_ids, attention_mask, token_type_ids).pooled
        logits = self.classifier(self.drop(pooled))  # (B, num_labels)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return ClassifierOutput(logits, loss)


def mean_pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of (B, T, C) over real tokens -> (B, C); padding does not count."""
    if attention_mask is None:
        return hidden_states.mean(1)
    m = attention_mask.unsqueeze(-1).to(hidden_states.dtype)  # (B, T, 1)
    return (hidden_states * m).sum(1) / m.sum(1).clamp(min=1e-9)


def base_model(model: nn.Module) -> BertModel:
    """The BertModel inside any of the classes above."""
    return model if isinstance(model, BertModel) else model.bert


@torch.no_grad()
def sentence_embeddings(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Mean-pooled (and L2-normalised) sentence vectors (B, C), as sentence-transformers computes them."""
    hidden = base_model(model)(input_ids, attention_mask).hidden_states
    emb = mean_pool(hidden, attention_mask)
    return F.normalize(emb, p=2, dim=-1) if normalize else emb


def encode_texts(
    tokenizer: Any, texts: list[str], max_length: int, pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask), each (B, T), of texts wrapped as [CLS] text [SEP]."""
    ids = []
    for t in texts:
        x = tokenizer.encode(t, add_special_tokens=True)
        if len(x) > max_length:  # keep the closing [SEP]
            x = x[: max_length - 1] + x[-1:]
        ids.append(x)
    T = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), T), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x)
        attention_mask[i, : len(x)] = 1
    return input_ids, attention_mask


def embed(
    model: nn.Module, tokenizer: Any, texts: list[str], batch_size: int = 32, max_length: int = 256
) -> torch.Tensor:
    """Sentence embeddings (N, C) of texts with a BERT and its WordPiece tokenizer (all-MiniLM-L6-v2 style)."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_id
    out = []
    model.eval()
    for i in range(0, len(texts), batch_size):
        input_ids, attention_mask = encode_texts(tokenizer, texts[i : i + batch_size], max_length, pad)
        out.append(sentence_embeddings(model, input_ids.to(device), attention_mask.to(device)))
    return torch.cat(out)
