"""GGUF -> danlu GPT: LLaMA-family weights from a llama.cpp file (the format itself is read by danlu/gguf.py).

Tensor names: token_embd, blk.N.attn_{q,k,v,output}, blk.N.ffn_{gate,up,down}, blk.N.{attn,ffn}_norm,
output_norm, output (absent when the embedding is tied). LLaMA q/k rows are stored permuted (see
`unpermute_rope`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from danlu.errors import DanluError
from danlu.gguf import (
    DEQUANTIZABLE,
    DEQUANTIZABLE_NAMES,
    GGML_TYPES,
    GGUFFile,
    dequantize,
    gguf_metadata,
    read_gguf,
)
from danlu.models.config_checks import range_problem, type_problem
from danlu.models.weights import build_gpt

if TYPE_CHECKING:
    from danlu.models.gpt import GPT, GPTConfig

__all__ = ["DEQUANTIZABLE", "DEQUANTIZABLE_NAMES", "GGML_TYPES", "GGUFFile", "dequantize", "gguf_metadata",
           "read_gguf", "config_from_gguf", "unpermute_rope", "state_dict_from_gguf", "load_gguf_model"]  # fmt: skip


# ------------------------------------------------------------------------------------------- GGUF -> GPT
GGUF_ARCHITECTURES = ("llama", "qwen2", "mistral")


def config_from_gguf(f: GGUFFile) -> GPTConfig:
    """A GPTConfig from `<arch>.*` metadata (LLaMA family: RMSNorm, SwiGLU, RoPE)."""
    from danlu.models.gpt import GPTConfig

    meta = f.metadata
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise DanluError(
            f"{f.path}: unsupported architecture general.architecture={arch!r}; danlu loads GGUF {list(GGUF_ARCHITECTURES)}"
        )

    def get(key: str, field: str, default: Any = None, annotation: str = "int") -> Any:
        # type and range checked under the file's own key, before anything is sized by it
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise DanluError(f"{f.path}: metadata {arch}.{key} is missing; the GGUF file is incomplete")
        why = type_problem(value, annotation) or range_problem(field, value)
        if why:
            raise DanluError(f"{f.path}: metadata {arch}.{key} {why}, got {value!r}"[:300])
        return value

    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise DanluError(f"{f.path}: RoPE scaling {scaling!r} is not supported; only plain RoPE")
    n_embd, n_head = get("embedding_length", "n_embd"), get("attention.head_count", "n_head")
    if get("rope.dimension_count", "n_embd", n_embd // n_head) != n_embd // n_head:
        raise DanluError(f"{f.path}: partial rotary embeddings (rope.dimension_count) are not supported")
    tokens = meta.get("tokenizer.ggml.tokens")
    if "token_embd.weight" not in f.tensors:
        raise DanluError(
            f"{f.path}: tensor token_embd.weight is missing; the GGUF file does not hold a model"
        )
    embd_rows = f.tensors["token_embd.weight"].shape[0]
    vocab = get("vocab_size", "vocab_size", len(tokens) if isinstance(tokens, list) and tokens else embd_rows)
    return GPTConfig(
        vocab_size=vocab,
        block_size=get("context_length", "block_size"),  # RoPE tables are sized lazily: costs nothing yet
        n_layer=get("block_count", "n_layer"),
        n_head=n_head,
        n_kv_head=get("attention.head_count_kv", "n_kv_head", n_head),
        n_embd=n_embd,
        intermediate_size=get("feed_forward_length", "intermediate_size"),
        norm="rmsnorm",
        norm_eps=get("attention.layer_norm_rms_epsilon", "norm_eps", 1e-5, "float"),
        mlp="swiglu",
        position="rope",
        rope_theta=float(get("rope.freq_base", "rope_theta", 10000.0, "float")),
        bias=False,
        qkv_bias="blk.0.attn_q.bias" in f.tensors,
        tie_embeddings="output.weight" not in f.tensors,
    )


def unpermute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of LLaMA q/k rows (or biases).

    Its converter interleaves each head's rows, (x_0..x_{h/2-1}, x_{h/2}..x_{h-1}) -> (x_0, x_{h/2}, x_1, ...),
    because ggml rotates adjacent pairs; danlu (and Hugging Face) rotate the two halves (`apply_rope`).
    """
    rows = w.shape[0]
    head_size = rows // n_head
    x = w.reshape(n_head, head_size // 2, 2, *w.shape[1:])  # (n_head, hs/2, 2, ...): interleaved pairs
    return x.transpose(1, 2).reshape(w.shape)  # (n_head, 2, hs/2, ...): the two halves


def state_dict_from_gguf(f: GGUFFile, cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """danlu GPT tensors from a LLaMA-family GGUF (dequantised, q/k rows un-permuted for arch llama)."""
    permuted = f.metadata.get("general.architecture") in ("llama", "mistral")  # qwen2 is stored as-is

    def get(name: str) -> torch.Tensor:
        if name not in f.tensors:
            raise DanluError(
                f"{f.path}: tensor {name} is missing; the GGUF file does not hold a complete model"
            )
        return f.tensor(name)

    out = {"wte.weight": get("token_embd.weight"), "norm_f.weight": get("output_norm.weight")}
    out["lm_head.weight"] = get("output.weight") if "output.weight" in f.tensors else out["wte.weight"]
    for i in range(cfg.n_layer):
        g, b = f"blk.{i}.", f"blocks.{i}."
        q, k, v = get(g + "attn_q.weight"), get(g + "attn_k.weight"), get(g + "attn_v.weight")
        if permuted:
            q, k = unpermute_rope(q, cfg.n_head), unpermute_rope(k, cfg.n_kv_head)
        out[b + "attn.qkv.weight"] = torch.cat([q, k, v])
        if cfg.qkv_bias:
            qb, kb, vb = get(g + "attn_q.bias"), get(g + "attn_k.bias"), get(g + "attn_v.bias")
            if permuted:
                qb, kb = unpermute_rope(qb, cfg.n_head), unpermute_rope(kb, cfg.n_kv_head)
            out[b + "attn.qkv.bias"] = torch.cat([qb, kb, vb])
        out[b + "attn.proj.weight"] = get(g + "attn_output.weight")
        for ours, theirs in (("gate", "ffn_gate"), ("up", "ffn_up"), ("down", "ffn_down")):
            out[b + f"mlp.{ours}.weight"] = get(g + theirs + ".weight")
        out[b + "norm1.weight"] = get(g + "attn_norm.weight")
        out[b + "norm2.weight"] = get(g + "ffn_norm.weight")
    return out


def load_gguf_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> GPT:
    """A danlu GPT from a LLaMA / Qwen2 / SmolLM GGUF file, weights dequantised to float32 (or `dtype`)."""
    f = read_gguf(path)
    cfg = config_from_gguf(f)
    try:
        sd = state_dict_from_gguf(f, cfg)
    except (RuntimeError, ValueError) as e:  # q/k/v that cannot be un-permuted or fused: shapes fit no config
        raise DanluError(
            f"{f.path}: the tensors do not fit the model its metadata describes ({str(e)[:200]})"
        ) from e
    model = build_gpt(cfg, sd, str(f.path))  # checks every shape, and that no weight is NaN or infinite
    return model.to(device=device, dtype=dtype or torch.float32).eval()
