"""Name mapping between danlu's BERT classes and Hugging Face BERT checkpoints (BertModel, BertForPreTraining,
BertForMaskedLM, BertForSequenceClassification, and sentence-transformers folders holding a BertModel).

Pure functions on config dicts and state dicts, no transformers import. Hugging Face keeps query, key and
value as three linears; danlu fuses them into one `qkv` matmul (danlu/nn/attention.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from danlu.errors import DanluError
from danlu.models.bert import BertConfig, BertForPreTraining, BertForSequenceClassification, BertModel
from danlu.models.config_checks import hf_value

ACTS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
HEADS = {
    "base": BertModel,
    "pretraining": BertForPreTraining,
    "classification": BertForSequenceClassification,
}
HF_CLASS = {
    "base": "BertModel",
    "pretraining": "BertForPreTraining",
    "classification": "BertForSequenceClassification",
}


def config_from_hf(hf: dict[str, Any]) -> BertConfig:
    """A BertConfig from a Hugging Face BERT `config.json`."""

    def get(key: str, field: str = "", annotation: str = "int", **default: Any) -> Any:
        # every value is checked under the file's own name, before BertConfig sees it
        return hf_value(hf, key, annotation, field=field or key, **default)

    act = get("hidden_act", annotation="str", default="gelu")
    if act not in ACTS:
        raise DanluError(f"BERT hidden_act {act!r} is not supported; supported: {sorted(ACTS)}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise DanluError(
            f"BERT position_embedding_type {hf['position_embedding_type']!r} is not supported; only 'absolute'"
        )
    id2label = get("id2label", annotation="dict", default=None)
    return BertConfig(
        vocab_size=get("vocab_size"),
        block_size=get("max_position_embeddings", "block_size", default=512),
        n_layer=get("num_hidden_layers", "n_layer"),
        n_head=get("num_attention_heads", "n_head"),
        n_embd=get("hidden_size", "n_embd"),
        intermediate_size=get("intermediate_size", default=None),
        type_vocab_size=get("type_vocab_size", default=2),
        activation=ACTS[act],
        norm_eps=get("layer_norm_eps", "norm_eps", "float", default=1e-12),
        dropout=get("hidden_dropout_prob", "dropout", "float", default=0.1),
        pad_token_id=get("pad_token_id", default=0),
        num_labels=len(id2label) if id2label else get("num_labels", default=2),
        id2label={str(k): v for k, v in id2label.items()} if id2label else None,
    )


def config_to_hf(cfg: BertConfig, head: str) -> dict[str, Any]:
    act = {v: k for k, v in ACTS.items() if k != "gelu_pytorch_tanh"}[cfg.activation]
    out = dict(
        model_type="bert",
        architectures=[HF_CLASS[head]],
        vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.block_size,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        hidden_size=cfg.n_embd,
        intermediate_size=cfg.intermediate_size,
        type_vocab_size=cfg.type_vocab_size,
        hidden_act=act,
        layer_norm_eps=cfg.norm_eps,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        pad_token_id=cfg.pad_token_id,
        position_embedding_type="absolute",
    )
    if head == "classification":
        labels = cfg.id2label or {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
        out["id2label"], out["label2id"] = labels, {v: int(k) for k, v in labels.items()}
    return out


def head_of(tensor_names: set[str]) -> str:
    """Which class a Hugging Face BERT state dict belongs to, from its tensor names."""
    if "cls.predictions.bias" in tensor_names:
        return "pretraining"
    if "classifier.weight" in tensor_names:
        return "classification"
    return "base"


def head_name(model: nn.Module) -> str:
    for head, cls in HEADS.items():
        if type(model) is cls:
            return head
    raise DanluError(f"{type(model).__name__} is not a danlu BERT class")


def _layer_map(i: int) -> list[tuple[str, str]]:
    """(HF name, danlu name) for one encoder layer, excluding the fused q/k/v."""
    h, b = f"encoder.layer.{i}.", f"blocks.{i}."
    pairs = [
        ("attention.output.dense", "attn.proj"),
        ("attention.output.LayerNorm", "norm1"),
        ("intermediate.dense", "mlp.fc"),
        ("output.dense", "mlp.proj"),
        ("output.LayerNorm", "norm2"),
    ]
    return [(h + hf + s, b + ours + s) for hf, ours in pairs for s in (".weight", ".bias")]


def _base_map(cfg: BertConfig, pooler: bool) -> list[tuple[str, str]]:
    pairs = [
        ("embeddings.word_embeddings.weight", "wte.weight"),
        ("embeddings.position_embeddings.weight", "wpe.weight"),
        ("embeddings.token_type_embeddings.weight", "wtt.weight"),
        ("embeddings.LayerNorm.weight", "emb_norm.weight"),
        ("embeddings.LayerNorm.bias", "emb_norm.bias"),
    ]
    if pooler:
        pairs += [("pooler.dense.weight", "pooler.weight"), ("pooler.dense.bias", "pooler.bias")]
    for i in range(cfg.n_layer):
        pairs += _layer_map(i)
    return pairs


def _head_map(head: str) -> list[tuple[str, str]]:
    if head == "pretraining":
        return [
            ("cls.predictions.transform.dense.weight", "mlm_dense.weight"),
            ("cls.predictions.transform.dense.bias", "mlm_dense.bias"),
            ("cls.predictions.transform.LayerNorm.weight", "mlm_norm.weight"),
            ("cls.predictions.transform.LayerNorm.bias", "mlm_norm.bias"),
            ("cls.predictions.bias", "mlm_bias"),
            ("cls.seq_relationship.weight", "nsp.weight"),
            ("cls.seq_relationship.bias", "nsp.bias"),
        ]
    if head == "classification":
        return [("classifier.weight", "classifier.weight"), ("classifier.bias", "classifier.bias")]
    return []


def state_dict_from_hf(sd: dict[str, torch.Tensor], cfg: BertConfig, head: str) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face BERT state dict to danlu's names for the class HEADS[head] (KeyError if one is missing)."""
    # Heads models prefix the encoder with "bert."; a bare BertModel (sentence-transformers) does not.
    sd = {k.removeprefix("bert."): v for k, v in sd.items()}
    prefix = "" if head == "base" else "bert."
    pooler = "pooler.dense.weight" in sd or head != "base"
    out = {prefix + ours: sd[hf] for hf, ours in _base_map(cfg, pooler)}
    for i in range(cfg.n_layer):
        a = f"encoder.layer.{i}.attention.self."
        for s in ("weight", "bias"):
            out[f"{prefix}blocks.{i}.attn.qkv.{s}"] = torch.cat(
                [sd[a + f"query.{s}"], sd[a + f"key.{s}"], sd[a + f"value.{s}"]]
            )
    for hf, ours in _head_map(head):
        if hf.startswith("cls.seq_relationship") and not cfg.with_nsp:
            continue
        out[ours] = sd[hf]
    return out


def state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: BertConfig, head: str) -> dict[str, torch.Tensor]:
    """The inverse of `state_dict_from_hf` (Hugging Face names, "bert." prefix for the heads classes)."""
    prefix = "" if head == "base" else "bert."
    pooler = prefix + "pooler.weight" in sd
    out = {prefix + hf: sd[prefix + ours] for hf, ours in _base_map(cfg, pooler)}
    C = cfg.n_embd
    for i in range(cfg.n_layer):
        a = f"{prefix}encoder.layer.{i}.attention.self."
        for s in ("weight", "bias"):
            q, k, v = sd[f"{prefix}blocks.{i}.attn.qkv.{s}"].split(C)
            out[a + f"query.{s}"], out[a + f"key.{s}"] = q.contiguous(), k.contiguous()
            out[a + f"value.{s}"] = v.contiguous()
    for hf, ours in _head_map(head):
        if ours in sd:
            out[hf] = sd[ours]
    return out


def build(cfg: BertConfig, head: str) -> nn.Module:
    return HEADS[head](cfg)
