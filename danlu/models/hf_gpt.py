"""Name and layout mapping between danlu's GPT and Hugging Face GPT-2 / LLaMA-family checkpoints.

Pure functions on configs (dicts) and state dicts (name -> tensor): no transformers import, so danlu reads a
Hugging Face directory without installing transformers. GPT-2 stores its linear weights in "Conv1D" layout
(in, out), the transpose of `nn.Linear`'s (out, in). LLaMA keeps q, k, v separate; danlu fuses them into one
`qkv` matmul.
"""

from __future__ import annotations

from typing import Any

import torch

from danlu.errors import DanluError
from danlu.models.config_checks import hf_value
from danlu.models.gpt import GPTConfig
from danlu.models.hf_llama import (
    LLAMA_FAMILY,
    llama_config_from_hf,
    llama_config_to_hf,
    llama_state_dict_from_hf,
    llama_state_dict_to_hf,
)

SUPPORTED_GPT_TYPES = ("gpt2", *LLAMA_FAMILY)


def config_from_hf(hf: dict[str, Any]) -> GPTConfig:
    """A GPTConfig from a Hugging Face `config.json` of a GPT-2 or LLaMA-family model."""
    model_type = hf.get("model_type")

    def get(key: str, field: str = "", annotation: str = "int", **default: Any) -> Any:
        # every value is checked under the file's own name, before GPTConfig sees it
        return hf_value(hf, key, annotation, field=field or key, **default)

    if model_type == "gpt2":
        act = get("activation_function", annotation="str", default="gelu_new")
        acts = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
        if act not in acts:
            raise DanluError(f"GPT-2 activation {act!r} is not supported; supported: {sorted(acts)}")
        n_embd = get("n_embd", "n_embd")
        return GPTConfig(
            vocab_size=get("vocab_size"),
            block_size=get("n_positions", "block_size", default=1024),
            n_layer=get("n_layer"),
            n_head=get("n_head"),
            n_embd=n_embd,
            intermediate_size=get("n_inner", "intermediate_size", default=4 * n_embd),
            norm="layernorm",
            norm_eps=get("layer_norm_epsilon", "norm_eps", "float", default=1e-5),
            mlp=acts[act],
            position="learned",
            bias=True,
            tie_embeddings=get("tie_word_embeddings", annotation="bool", default=True),
        )
    if model_type in LLAMA_FAMILY:
        return llama_config_from_hf(hf, model_type)
    raise DanluError(
        f"unsupported architecture model_type={model_type!r}; danlu's GPT loads {list(SUPPORTED_GPT_TYPES)}"
    )


def config_to_hf(cfg: GPTConfig) -> dict[str, Any]:
    """A Hugging Face config dict (GPT-2 for learned positions, LLaMA for RoPE) describing the same model."""
    if cfg.position == "learned":
        if cfg.norm != "layernorm" or cfg.mlp not in ("gelu_tanh", "gelu", "relu") or not cfg.bias:
            raise DanluError("only GPT-2-shaped models (LayerNorm, GELU, biases) export as gpt2")
        act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[cfg.mlp]
        out = dict(
            model_type="gpt2",
            architectures=["GPT2LMHeadModel"],
            vocab_size=cfg.vocab_size,
            n_positions=cfg.block_size,
            n_ctx=cfg.block_size,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_inner=cfg.intermediate_size,
            activation_function=act,
            layer_norm_epsilon=cfg.norm_eps,
            tie_word_embeddings=cfg.tie_embeddings,
        )
        back = config_from_hf(out).to_dict()  # issue 19's fields (qk_norm, softcaps, ...) have no gpt2 form
        same = {"hf_model_type"} | ({"head_dim"} if cfg.head_size * cfg.n_head == cfg.n_embd else set())
        diff = [f"{k}={v!r}" for k, v in cfg.to_dict().items() if k not in same and back[k] != v]
        if diff:
            raise DanluError(
                f"no Hugging Face family expresses this GPT (gpt2 would change {', '.join(diff)})"
            )
        return out
    if cfg.bias:
        raise DanluError("a RoPE model with biases outside q/k/v (bias=True) has no Hugging Face family")
    return llama_config_to_hf(cfg)


def _gpt2_names(cfg: GPTConfig) -> list[tuple[str, str, bool]]:
    """(HF GPT-2 name without its "transformer." prefix, danlu name, whether HF stores it transposed) for every
    tensor but the LM head: the one name table that import and export walk in opposite directions. HF's
    GPT-2 keeps its linear layers as Conv1D, weight (in, out); danlu's nn.Linear holds (out, in)."""
    names = [("wte.weight", "wte.weight", False), ("wpe.weight", "wpe.weight", False)]
    for i in range(cfg.n_layer):
        h, b = f"h.{i}.", f"blocks.{i}."
        for hf_norm, ours in (("ln_1", "norm1"), ("ln_2", "norm2")):
            names += [(h + hf_norm + ".weight", b + ours + ".weight", False),
                      (h + hf_norm + ".bias", b + ours + ".bias", False)]  # fmt: skip
        for hf_lin, ours in (("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.proj"),
                             ("mlp.c_fc", "mlp.fc"), ("mlp.c_proj", "mlp.proj")):  # fmt: skip
            names += [(h + hf_lin + ".weight", b + ours + ".weight", True),
                      (h + hf_lin + ".bias", b + ours + ".bias", False)]  # fmt: skip
    return names + [("ln_f.weight", "norm_f.weight", False), ("ln_f.bias", "norm_f.bias", False)]


def state_dict_from_hf(
    model_type: str, sd: dict[str, torch.Tensor], cfg: GPTConfig
) -> dict[str, torch.Tensor]:
    """Rename (and fuse / transpose) a Hugging Face state dict into danlu GPT names."""
    out: dict[str, torch.Tensor] = {}
    # Some checkpoints prefix with the base model's name, some don't (a bare GPT2Model / LlamaModel).
    if model_type == "gpt2":
        sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
        for hf, ours, conv1d in _gpt2_names(cfg):
            out[ours] = sd[hf].t() if conv1d else sd[hf]  # Conv1D (in, out) -> (out, in)
        out["lm_head.weight"] = sd.get("lm_head.weight", sd["wte.weight"])
        return out
    if model_type in LLAMA_FAMILY:
        return llama_state_dict_from_hf(sd, cfg, model_type)
    raise DanluError(f"unsupported architecture model_type={model_type!r}")


def state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """The inverse of `state_dict_from_hf`, for the model type `config_to_hf(cfg)` names."""
    model_type = config_to_hf(cfg)["model_type"]
    out: dict[str, torch.Tensor] = {}
    if model_type == "gpt2":
        for hf, ours, conv1d in _gpt2_names(cfg):
            out["transformer." + hf] = sd[ours].t().contiguous() if conv1d else sd[ours]
        if not cfg.tie_embeddings:
            out["lm_head.weight"] = sd["lm_head.weight"]
        return out
    return llama_state_dict_to_hf(sd, cfg)
