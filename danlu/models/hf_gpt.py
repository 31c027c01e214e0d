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

LLAMA_FAMILY = ("llama", "qwen2", "mistral")  # same tensor names; Qwen2 adds q/k/v biases


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
        act = get("hidden_act", annotation="str", default="silu")
        if act != "silu":
            raise DanluError(f"{model_type} hidden_act {act!r} is not supported; only 'silu'")
        rope = get("rope_parameters", annotation="dict", default=None) or get(
            "rope_scaling", annotation="dict", default=None
        )
        rope = rope or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise DanluError(f"RoPE scaling {rope.get('rope_type')!r} is not supported; only plain RoPE")
        n_head, n_embd = get("num_attention_heads", "n_head"), get("hidden_size", "n_embd")
        head_dim = get("head_dim", "n_embd", default=None)
        if head_dim and head_dim * n_head != n_embd:
            raise DanluError(f"head_dim {head_dim} · n_head != hidden_size {n_embd}: not supported")
        theta = hf_value(rope, "rope_theta", "float", field="rope_theta", default=None)
        return GPTConfig(
            vocab_size=get("vocab_size"),
            block_size=get("max_position_embeddings", "block_size", default=2048),
            n_layer=get("num_hidden_layers", "n_layer"),
            n_head=n_head,
            n_kv_head=get("num_key_value_heads", "n_kv_head", default=n_head),
            n_embd=n_embd,
            intermediate_size=get("intermediate_size"),
            norm="rmsnorm",
            norm_eps=get("rms_norm_eps", "norm_eps", "float", default=1e-6),
            mlp="swiglu",
            position="rope",
            rope_theta=float(theta or get("rope_theta", annotation="float", default=10000.0)),
            bias=False,
            qkv_bias=model_type == "qwen2" or get("attention_bias", annotation="bool", default=False),
            tie_embeddings=get("tie_word_embeddings", annotation="bool", default=False),
        )
    supported = ["gpt2", *LLAMA_FAMILY]
    raise DanluError(f"unsupported architecture model_type={model_type!r}; danlu's GPT loads {supported}")


def config_to_hf(cfg: GPTConfig) -> dict[str, Any]:
    """A Hugging Face config dict (GPT-2 for learned positions, LLaMA for RoPE) describing the same model."""
    if cfg.position == "learned":
        if cfg.norm != "layernorm" or cfg.mlp not in ("gelu_tanh", "gelu", "relu") or not cfg.bias:
            raise DanluError("only GPT-2-shaped models (LayerNorm, GELU, biases) export as gpt2")
        act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[cfg.mlp]
        return dict(
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
    if cfg.norm != "rmsnorm" or cfg.mlp != "swiglu" or cfg.bias:
        raise DanluError("only LLaMA-shaped models (RMSNorm, SwiGLU, no biases) export as llama")
    return dict(
        model_type="qwen2" if cfg.qkv_bias else "llama",
        architectures=["Qwen2ForCausalLM" if cfg.qkv_bias else "LlamaForCausalLM"],
        vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.block_size,
        hidden_size=cfg.n_embd,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_kv_head,
        head_dim=cfg.head_size,
        hidden_act="silu",
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
    )


def state_dict_from_hf(
    model_type: str, sd: dict[str, torch.Tensor], cfg: GPTConfig
) -> dict[str, torch.Tensor]:
    """Rename (and fuse / transpose) a Hugging Face state dict into danlu GPT names."""
    out: dict[str, torch.Tensor] = {}
    # Some checkpoints prefix with the base model's name, some don't (a bare GPT2Model / LlamaModel).
    if model_type == "gpt2":
        sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
        out["wte.weight"] = sd["wte.weight"]
        out["wpe.weight"] = sd["wpe.weight"]
        for i in range(cfg.n_layer):
            h, b = f"h.{i}.", f"blocks.{i}."
            for hf_norm, ours in (("ln_1", "norm1"), ("ln_2", "norm2")):
                out[b + ours + ".weight"] = sd[h + hf_norm + ".weight"]
                out[b + ours + ".bias"] = sd[h + hf_norm + ".bias"]
            for hf_lin, ours in (("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.proj"),
                                 ("mlp.c_fc", "mlp.fc"), ("mlp.c_proj", "mlp.proj")):  # fmt: skip
                out[b + ours + ".weight"] = sd[h + hf_lin + ".weight"].t()  # Conv1D (in, out) -> (out, in)
                out[b + ours + ".bias"] = sd[h + hf_lin + ".bias"]
        out["norm_f.weight"], out["norm_f.bias"] = sd["ln_f.weight"], sd["ln_f.bias"]
        out["lm_head.weight"] = sd.get("lm_head.weight", sd["wte.weight"])
        return out
    if model_type in LLAMA_FAMILY:
        sd = {k.removeprefix("model."): v for k, v in sd.items()}
        out["wte.weight"] = sd["embed_tokens.weight"]
        for i in range(cfg.n_layer):
            h, b = f"layers.{i}.", f"blocks.{i}."
            a = h + "self_attn."
            out[b + "attn.qkv.weight"] = torch.cat(
                [sd[a + "q_proj.weight"], sd[a + "k_proj.weight"], sd[a + "v_proj.weight"]]
            )
            if cfg.qkv_bias:
                out[b + "attn.qkv.bias"] = torch.cat(
                    [sd[a + "q_proj.bias"], sd[a + "k_proj.bias"], sd[a + "v_proj.bias"]]
                )
            out[b + "attn.proj.weight"] = sd[a + "o_proj.weight"]
            for name in ("gate", "up", "down"):
                out[b + f"mlp.{name}.weight"] = sd[h + f"mlp.{name}_proj.weight"]
            out[b + "norm1.weight"] = sd[h + "input_layernorm.weight"]
            out[b + "norm2.weight"] = sd[h + "post_attention_layernorm.weight"]
        out["norm_f.weight"] = sd["norm.weight"]
        out["lm_head.weight"] = sd.get("lm_head.weight", sd["embed_tokens.weight"])
        return out
    raise DanluError(f"unsupported architecture model_type={model_type!r}")


def state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """The inverse of `state_dict_from_hf`, for the model type `config_to_hf(cfg)` names."""
    model_type = config_to_hf(cfg)["model_type"]
    out: dict[str, torch.Tensor] = {}
    if model_type == "gpt2":
        out["transformer.wte.weight"] = sd["wte.weight"]
        out["transformer.wpe.weight"] = sd["wpe.weight"]
        for i in range(cfg.n_layer):
            h, b = f"transformer.h.{i}.", f"blocks.{i}."
            for hf_norm, ours in (("ln_1", "norm1"), ("ln_2", "norm2")):
                out[h + hf_norm + ".weight"] = sd[b + ours + ".weight"]
                out[h + hf_norm + ".bias"] = sd[b + ours + ".bias"]
            for hf_lin, ours in (("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.proj"),
                                 ("mlp.c_fc", "mlp.fc"), ("mlp.c_proj", "mlp.proj")):  # fmt: skip
                out[h + hf_lin + ".weight"] = sd[b + ours + ".weight"].t().contiguous()
                out[h + hf_lin + ".bias"] = sd[b + ours + ".bias"]
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["norm_f.weight"], sd["norm_f.bias"]
        if not cfg.tie_embeddings:
            out["lm_head.weight"] = sd["lm_head.weight"]
        return out
    hs = cfg.head_size
    sizes = [cfg.n_head * hs, cfg.n_kv_head * hs, cfg.n_kv_head * hs]
    out["model.embed_tokens.weight"] = sd["wte.weight"]
    for i in range(cfg.n_layer):
        h, b = f"model.layers.{i}.", f"blocks.{i}."
        q, k, v = sd[b + "attn.qkv.weight"].split(sizes)
        out[h + "self_attn.q_proj.weight"], out[h + "self_attn.k_proj.weight"] = (
            q.contiguous(),
            k.contiguous(),
        )
        out[h + "self_attn.v_proj.weight"] = v.contiguous()
        if cfg.qkv_bias:
            qb, kb, vb = sd[b + "attn.qkv.bias"].split(sizes)
            out[h + "self_attn.q_proj.bias"], out[h + "self_attn.k_proj.bias"] = qb, kb
            out[h + "self_attn.v_proj.bias"] = vb
        out[h + "self_attn.o_proj.weight"] = sd[b + "attn.proj.weight"]
        for name in ("gate", "up", "down"):
            out[h + f"mlp.{name}_proj.weight"] = sd[b + f"mlp.{name}.weight"]
        out[h + "input_layernorm.weight"] = sd[b + "norm1.weight"]
        out[h + "post_attention_layernorm.weight"] = sd[b + "norm2.weight"]
    out["model.norm.weight"] = sd["norm_f.weight"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out
