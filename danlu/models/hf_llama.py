"""Hugging Face LLaMA-family checkpoints <-> danlu's GPT: LLaMA, Qwen2, Qwen3, Mistral, Phi-3, OLMo-2, Gemma-2/3.

Each family is LLaMA (RMSNorm, SwiGLU, RoPE, grouped-query attention) plus a few GPTConfig fields:
  qwen3        qk_norm="head" (RMSNorm of each head's q and k, before RoPE)
  mistral      sliding_window (every layer)
  phi3         sliding_window; q/k/v fused in one `qkv_proj` and gate/up in one `gate_up_proj` tensor
  olmo2        qk_norm="full" (over the whole q / k projection), norm_placement="post"
  gemma2       norm="rmsnorm_1p", mlp="geglu_tanh", norm_placement="sandwich", embedding_scale=sqrt(C),
               query_scale=query_pre_attn_scalar^-1/2, attn/final logit soft-capping, sliding layers
               alternating with global ones
  gemma3_text  gemma2 without soft-capping, plus qk_norm="head" and rope_local_theta (sliding layers' base)
  llama        rope_scaling ("llama3", "linear", "yarn") when the checkpoint has one
Pure functions on dicts and tensors (no transformers import). Export (`llama_config_to_hf`) checks itself:
the HF config it writes must read back as the same GPTConfig, else it raises and the caller saves danlu's
own layout.
"""

from __future__ import annotations

from typing import Any

import torch

from danlu.errors import DanluError
from danlu.models.config_checks import hf_value
from danlu.models.gpt import GPTConfig

LLAMA_FAMILY = ("llama", "qwen2", "mistral", "qwen3", "phi3", "olmo2", "gemma2", "gemma3_text")
ARCHITECTURES = {
    "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM",
    "qwen3": "Qwen3ForCausalLM", "phi3": "Phi3ForCausalLM", "olmo2": "Olmo2ForCausalLM",
    "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
}  # fmt: skip
# Per norm placement: (HF name in a decoder layer, danlu name in a block).
NORM_NAMES = {
    "pre": [("input_layernorm", "norm1"), ("post_attention_layernorm", "norm2")],
    "post": [("post_attention_layernorm", "post_attn_norm"), ("post_feedforward_layernorm", "post_mlp_norm")],
    "sandwich": [
        ("input_layernorm", "norm1"),
        ("post_attention_layernorm", "post_attn_norm"),
        ("pre_feedforward_layernorm", "norm2"),
        ("post_feedforward_layernorm", "post_mlp_norm"),
    ],
}


def _rope(hf: dict[str, Any], model_type: str) -> tuple[float, dict | None, float | None]:
    """(rope_theta, rope_scaling, rope_local_theta) from `rope_parameters` (transformers 5) or the older
    `rope_theta` / `rope_scaling` / `rope_local_base_freq` fields."""
    params = hf_value(hf, "rope_parameters", "dict", default=None)
    legacy = hf_value(hf, "rope_scaling", "dict", default=None)  # checked even when rope_parameters wins
    local = None
    if params is not None and model_type == "gemma3_text" and "full_attention" in params:
        full, sliding = params.get("full_attention"), params.get("sliding_attention")
        if not isinstance(full, dict) or not isinstance(sliding, dict):
            raise DanluError(
                "field rope_parameters should map full_attention and sliding_attention to objects"
            )
        if sliding.get("rope_type", "default") != "default":
            raise DanluError(f"RoPE scaling {sliding.get('rope_type')!r} on sliding layers is not supported")
        local = float(hf_value(sliding, "rope_theta", "float", default=10000.0))
        params = full
    if params is None:
        params = dict(legacy or {})
        params["rope_theta"] = hf_value(hf, "rope_theta", "float", default=10000.0)
        if model_type == "gemma3_text":
            local = float(hf_value(hf, "rope_local_base_freq", "float", field="rope_theta", default=10000.0))
    theta = float(hf_value(params, "rope_theta", "float", default=10000.0))
    partial = params.get("partial_rotary_factor", 1.0)
    if partial != 1.0:
        raise DanluError(f"partial_rotary_factor {partial!r} is not supported; danlu rotates the whole head")
    scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor", "type")}
    scaling["rope_type"] = params.get("rope_type", params.get("type", "default"))
    if scaling["rope_type"] == "default":
        return theta, None, local
    if scaling["rope_type"] == "yarn" and "original_max_position_embeddings" not in scaling:
        scaling["original_max_position_embeddings"] = hf.get("original_max_position_embeddings")
    return theta, scaling, local


def _layer_types(hf: dict[str, Any], model_type: str, n_layer: int) -> tuple[int | None, list[str] | None]:
    """(sliding_window, layer_types) in danlu's terms: which layers attend through a window of what width."""
    window = hf_value(hf, "sliding_window", field="sliding_window", default=None)
    if model_type in ("qwen2", "qwen3") and not hf.get("use_sliding_window", False):
        window = None  # Qwen configs carry a window width even where the model does not use it
    types = hf.get("layer_types")
    if types is not None:
        names = {"full_attention": "full", "sliding_attention": "sliding"}
        if not isinstance(types, list) or len(types) != n_layer or any(t not in names for t in types):
            raise DanluError(
                f"field layer_types should list {n_layer} of {sorted(names)}, got {str(types)[:80]}"
            )
        types = [names[t] for t in types]
    elif model_type == "gemma2":  # HF: even layers slide, odd ones see everything
        types = ["sliding" if i % 2 == 0 else "full" for i in range(n_layer)]
    elif model_type == "gemma3_text":  # every sliding_window_pattern-th layer is global
        pattern = hf_value(hf, "sliding_window_pattern", default=None) or hf_value(
            hf, "_sliding_window_pattern", default=6
        )
        types = ["full" if (i + 1) % pattern == 0 else "sliding" for i in range(n_layer)]
    if window is None or types is None:
        return window, None
    if "sliding" not in types:
        return None, None
    return window, None if all(t == "sliding" for t in types) else types


def llama_config_from_hf(hf: dict[str, Any], model_type: str) -> GPTConfig:
    """LLaMA and the families that differ from it by a few config fields (docs/ARCHITECTURE.md table)."""

    def get(key: str, field: str = "", annotation: str = "int", **default: Any) -> Any:
        return hf_value(hf, key, annotation, field=field or key, **default)

    gemma = model_type in ("gemma2", "gemma3_text")
    act_key, want = ("hidden_activation", "gelu_pytorch_tanh") if gemma else ("hidden_act", "silu")
    act = get(act_key, annotation="str", default=want)
    if act != want:
        raise DanluError(f"{model_type} {act_key} {act!r} is not supported; only {want!r}")
    if model_type != "qwen2" and get("attention_bias", annotation="bool", default=False):
        raise DanluError(
            f"{model_type} attention_bias=true (biases on q/k/v and the output) is not supported"
        )
    if get("mlp_bias", annotation="bool", default=False):
        raise DanluError(f"{model_type} mlp_bias=true is not supported")
    n_head, n_embd, n_layer = (
        get("num_attention_heads", "n_head"),
        get("hidden_size", "n_embd"),
        get("num_hidden_layers", "n_layer"),
    )
    head_dim = get("head_dim", default=None)
    theta, scaling, local_theta = _rope(hf, model_type)
    window, types = _layer_types(hf, model_type, n_layer)
    extra: dict[str, Any] = {}
    if model_type in ("qwen3", "gemma3_text"):
        extra["qk_norm"] = "head"
    if model_type == "olmo2":
        extra.update(qk_norm="full", norm_placement="post")
    if gemma:
        scalar = get("query_pre_attn_scalar", "query_scale", "float", default=head_dim or n_embd // n_head)
        extra.update(
            norm="rmsnorm_1p", mlp="geglu_tanh", norm_placement="sandwich", embedding_scale=n_embd**0.5,
            query_scale=float(scalar) ** -0.5,
            attn_logit_softcap=get("attn_logit_softcapping", "attn_logit_softcap", "float", default=None),
            final_logit_softcap=get("final_logit_softcapping", "final_logit_softcap", "float", default=None),
        )  # fmt: skip
    return GPTConfig(
        **{
            **dict(norm="rmsnorm", mlp="swiglu"),
            **extra,
            **dict(
                vocab_size=get("vocab_size"),
                block_size=get("max_position_embeddings", "block_size", default=2048),
                n_layer=n_layer,
                n_head=n_head,
                n_kv_head=get("num_key_value_heads", "n_kv_head", default=n_head),
                n_embd=n_embd,
                head_dim=None if head_dim in (None, n_embd // n_head) and n_embd % n_head == 0 else head_dim,
                intermediate_size=get("intermediate_size"),
                norm_eps=get("rms_norm_eps", "norm_eps", "float", default=1e-6),
                position="rope",
                rope_theta=theta,
                rope_scaling=scaling,
                rope_local_theta=local_theta if local_theta != theta else None,
                sliding_window=window,
                layer_types=types,
                bias=False,
                qkv_bias=model_type == "qwen2",
                tie_embeddings=get("tie_word_embeddings", annotation="bool", default=gemma),
                hf_model_type=model_type,
            ),
        }
    )


def hf_family(cfg: GPTConfig) -> str:
    """The HF model_type that describes `cfg`, from the fields it uses; Phi-3 (the maths of Mistral, other
    tensor names) only when it was loaded as one."""
    if cfg.norm == "rmsnorm_1p":
        return "gemma3_text" if cfg.qk_norm == "head" else "gemma2"
    if cfg.qk_norm == "full" or cfg.norm_placement == "post":
        return "olmo2"
    if cfg.qk_norm == "head":
        return "qwen3"
    if cfg.qkv_bias:
        return "qwen2"
    if cfg.hf_model_type == "phi3":
        return "phi3"
    return "mistral" if cfg.sliding_window is not None else "llama"


def llama_config_to_hf(cfg: GPTConfig) -> dict[str, Any]:
    """A Hugging Face config dict of the LLaMA family describing `cfg`, or a DanluError naming what no family
    expresses (checked by reading the dict back: it must give the same GPTConfig)."""
    model_type = hf_family(cfg)
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta, **(cfg.rope_scaling or {})}
    out: dict[str, Any] = dict(
        model_type=model_type,
        architectures=[ARCHITECTURES[model_type]],
        vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.block_size,
        hidden_size=cfg.n_embd,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_kv_head,
        head_dim=cfg.head_size,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        rope_parameters=rope,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
    )
    if (
        model_type == "phi3"
    ):  # not Phi-3's default ids (32000, past a small vocabulary): the tokenizer's, if any
        out.update(pad_token_id=None, eos_token_id=None)
    if model_type in ("gemma2", "gemma3_text"):
        out["hidden_activation"] = "gelu_pytorch_tanh"
        scalar = (cfg.query_scale or cfg.head_size**-0.5) ** -2
        if abs(scalar - round(scalar)) > 1e-6 * scalar:  # transformers holds it as an int
            raise DanluError(f"query_scale={cfg.query_scale!r} is not 1/sqrt of an integer: no Gemma form")
        out["query_pre_attn_scalar"] = round(scalar)
        out["attn_logit_softcapping"] = cfg.attn_logit_softcap
        out["final_logit_softcapping"] = cfg.final_logit_softcap
    else:
        out["hidden_act"] = "silu"
    if model_type == "gemma3_text":
        local = {"rope_type": "default", "rope_theta": cfg.rope_local_theta or cfg.rope_theta}
        out["rope_parameters"] = {"full_attention": rope, "sliding_attention": local}
    if model_type in ("mistral", "phi3"):
        out["sliding_window"] = cfg.sliding_window  # null spelled out: Mistral's default is 4096
    if cfg.sliding_window is not None:
        out["sliding_window"] = cfg.sliding_window
        if model_type in ("qwen2", "qwen3"):
            out["use_sliding_window"] = True
        if model_type not in ("mistral", "phi3"):  # these slide in every layer
            names = {"full": "full_attention", "sliding": "sliding_attention"}
            types = cfg.layer_types or ["sliding"] * cfg.n_layer
            out["layer_types"] = [names[t] for t in types]
    elif model_type in ("gemma2", "gemma3_text"):
        out["sliding_window"] = cfg.block_size  # Gemma always has sliding layers: make them see everything
        out["layer_types"] = ["full_attention"] * cfg.n_layer
    back = llama_config_from_hf(out, model_type)
    ignore = (
        {"hf_model_type", "sliding_window", "layer_types"}
        if cfg.sliding_window is None
        else {"hf_model_type"}
    )
    ignore.add("head_dim")  # None and n_embd // n_head are the same width: compare head_size instead
    diff = [k for k, v in cfg.to_dict().items() if k not in ignore and back.to_dict()[k] != v]
    diff += ["head_dim"] if back.head_size != cfg.head_size else []
    if diff or (cfg.sliding_window is None and back.sliding_window not in (None, cfg.block_size)):
        shown = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in diff)
        raise DanluError(f"no Hugging Face family expresses this GPT ({model_type} would change {shown})")
    return out


def _renamed(cfg: GPTConfig, h: str, b: str) -> list[tuple[str, str]]:
    """(HF name, danlu name) of block b's tensors that only change name (not fused, split or transposed), HF's
    layer prefix h ending in "layers.{i}.": import and export walk this one table in opposite directions."""
    a = h + "self_attn."
    names = []
    if cfg.qk_norm != "none":
        names += [
            (a + "q_norm.weight", b + "attn.q_norm.weight"),
            (a + "k_norm.weight", b + "attn.k_norm.weight"),
        ]
    names += [
        (a + "o_proj.weight", b + "attn.proj.weight"),
        (h + "mlp.down_proj.weight", b + "mlp.down.weight"),
    ]
    return names + [
        (h + hf_name + ".weight", b + ours + ".weight") for hf_name, ours in NORM_NAMES[cfg.norm_placement]
    ]


def llama_state_dict_from_hf(
    sd: dict[str, torch.Tensor], cfg: GPTConfig, model_type: str
) -> dict[str, torch.Tensor]:
    """HF LLaMA-family tensors -> danlu GPT names (q/k/v fused into `qkv`; Phi-3's fused tensors split)."""
    sd = {k.removeprefix("model."): v for k, v in sd.items()}
    out = {"wte.weight": sd["embed_tokens.weight"]}
    for i in range(cfg.n_layer):
        h, b = f"layers.{i}.", f"blocks.{i}."
        a = h + "self_attn."
        if model_type == "phi3":
            out[b + "attn.qkv.weight"] = sd[a + "qkv_proj.weight"]
            gate, up = sd[h + "mlp.gate_up_proj.weight"].chunk(2)  # [gate | up] rows
            out[b + "mlp.gate.weight"], out[b + "mlp.up.weight"] = gate, up
        else:
            out[b + "attn.qkv.weight"] = torch.cat([sd[a + f"{n}_proj.weight"] for n in "qkv"])
            out[b + "mlp.gate.weight"] = sd[h + "mlp.gate_proj.weight"]
            out[b + "mlp.up.weight"] = sd[h + "mlp.up_proj.weight"]
        if cfg.qkv_bias:
            out[b + "attn.qkv.bias"] = torch.cat([sd[a + f"{n}_proj.bias"] for n in "qkv"])
        for hf_name, ours in _renamed(cfg, h, b):
            out[ours] = sd[hf_name]
    out["norm_f.weight"] = sd["norm.weight"]
    out["lm_head.weight"] = sd.get("lm_head.weight", sd["embed_tokens.weight"])
    return out


def llama_state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """The inverse of `llama_state_dict_from_hf`, for the family `hf_family(cfg)` names."""
    model_type = hf_family(cfg)
    hs = cfg.head_size
    sizes = [cfg.n_head * hs, cfg.n_kv_head * hs, cfg.n_kv_head * hs]
    out = {"model.embed_tokens.weight": sd["wte.weight"]}
    for i in range(cfg.n_layer):
        h, b = f"model.layers.{i}.", f"blocks.{i}."
        a = h + "self_attn."
        if model_type == "phi3":
            out[a + "qkv_proj.weight"] = sd[b + "attn.qkv.weight"]
            out[h + "mlp.gate_up_proj.weight"] = torch.cat(
                [sd[b + "mlp.gate.weight"], sd[b + "mlp.up.weight"]]
            )
        else:
            for n, w in zip("qkv", sd[b + "attn.qkv.weight"].split(sizes)):
                out[a + f"{n}_proj.weight"] = w.contiguous()
            out[h + "mlp.gate_proj.weight"] = sd[b + "mlp.gate.weight"]
            out[h + "mlp.up_proj.weight"] = sd[b + "mlp.up.weight"]
        if cfg.qkv_bias:
            for n, w in zip("qkv", sd[b + "attn.qkv.bias"].split(sizes)):
                out[a + f"{n}_proj.bias"] = w.contiguous()
        for hf_name, ours in _renamed(cfg, h, b):
            out[hf_name] = sd[ours]
    out["model.norm.weight"] = sd["norm_f.weight"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out
