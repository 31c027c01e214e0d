"""danlu GPT -> GGUF, the single-file format llama.cpp and Ollama run (written with the `gguf` package).

The inverse of `danlu/models/gguf.py`: the same tensor names, and LLaMA's q/k rows permuted into the
interleaved order ggml's RoPE rotates (`permute_rope`, the inverse of `unpermute_rope`). Three architectures
have a GGUF form that llama.cpp and transformers' GGUF loader both read:

- `llama`: RMSNorm, SwiGLU, RoPE, no biases (danlu's LLaMA / SmolLM2 configs);
- `qwen2`: the same with q/k/v biases;
- `gpt2`: LayerNorm, learned positions, tanh-GELU MLP, biases, fused qkv.

A config outside these (e.g. RoPE with a GELU MLP) has no GGUF architecture, and the export names the feature
instead of writing a file no engine reads right. The tokenizer goes along: byte-level BPE as
`tokenizer.ggml.*` (tokens, token types, merges, special ids, the chat template), and the exact
`tokenizer.json` under `tokenizer.huggingface.json` so danlu-specific pre-tokenization survives the trip.

Weights: `f32`, `f16` (1-D tensors — norms and biases — stay f32, as llama.cpp's converter keeps them), or
`q8_0` (blocks of 32 int8 values with one f16 scale; matrices whose rows are not a multiple of 32 stay f16).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from danlu.errors import DanluError

if TYPE_CHECKING:
    from danlu.models.gpt import GPT, GPTConfig

__all__ = ["GGUF_DTYPES", "gguf_architecture", "permute_rope", "export_gguf"]

GGUF_DTYPES = ("f32", "f16", "q8_0")
_FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7}  # llama.cpp's LLAMA_FTYPE_ALL_F32 / MOSTLY_F16 / MOSTLY_Q8_0
_Q8_BLOCK = 32


def gguf_architecture(cfg: GPTConfig) -> str:
    """The GGUF `general.architecture` that expresses `cfg`, or a DanluError naming what does not fit."""
    from danlu.models.gpt import GPTConfig

    # Issue 19's architecture fields (Qwen3, Gemma, OLMo-2, sliding windows, RoPE scaling) have GGUF forms in
    # llama.cpp, but danlu writes only the three architectures below: name the field, not a wrong file.
    defaults = GPTConfig()
    extra = [
        f"{name}={getattr(cfg, name)!r}"
        for name in (
            "head_dim",
            "qk_norm",
            "norm_placement",
            "embedding_scale",
            "query_scale",
            "attn_logit_softcap",
            "final_logit_softcap",
            "sliding_window",
            "rope_scaling",
            "rope_local_theta",
        )  # fmt: skip
        if getattr(cfg, name) != getattr(defaults, name)
        and not (name == "head_dim" and cfg.head_size * cfg.n_head == cfg.n_embd)
    ]
    if cfg.norm not in ("layernorm", "rmsnorm"):
        extra.insert(0, f"norm={cfg.norm!r}")
    if cfg.mlp not in ("gelu_tanh", "gelu", "relu", "swiglu"):
        extra.insert(0, f"mlp={cfg.mlp!r}")
    if extra:
        raise DanluError(
            f"GGUF export: {', '.join(extra)} cannot be expressed by danlu's GGUF writer (llama, qwen2, gpt2 "
            "architectures only); export --format hf writes a folder transformers and vLLM load"
        )
    if cfg.norm == "rmsnorm" and cfg.mlp == "swiglu" and cfg.position == "rope":
        if cfg.bias:
            raise DanluError(
                "GGUF export: bias=True on a RoPE/SwiGLU model (biases outside q/k/v) has no GGUF architecture; "
                "llama and qwen2 carry at most q/k/v biases"
            )
        return "qwen2" if cfg.qkv_bias else "llama"
    if cfg.norm == "layernorm" and cfg.position == "learned":
        if cfg.mlp != "gelu_tanh":
            raise DanluError(
                f"GGUF export: mlp={cfg.mlp!r} cannot be expressed; GGUF's gpt2 architecture uses the tanh "
                "approximation of GELU (mlp='gelu_tanh')"
            )
        if not cfg.bias:
            raise DanluError(
                "GGUF export: bias=False cannot be expressed; GGUF's gpt2 architecture has biases"
            )
        return "gpt2"
    raise DanluError(
        f"GGUF export: norm={cfg.norm!r} with mlp={cfg.mlp!r} and position={cfg.position!r} has no GGUF "
        "architecture; export LLaMA-style (rmsnorm, swiglu, rope) or GPT-2-style (layernorm, gelu_tanh, learned)"
    )


def permute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """q/k rows from danlu's halves order into ggml's interleaved pairs (inverse of `unpermute_rope`)."""
    head_size = w.shape[0] // n_head
    x = w.reshape(n_head, 2, head_size // 2, *w.shape[1:])  # (n_head, 2, hs/2, ...): the two halves
    return x.transpose(1, 2).reshape(w.shape)  # (n_head, hs/2, 2, ...): interleaved pairs


def _tensors(model: GPT, arch: str) -> dict[str, torch.Tensor]:
    """GGUF tensor name -> weight, in GGUF's order (embedding first, then blocks, then the head)."""
    cfg = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    q_rows, kv_rows = cfg.n_head * (cfg.n_embd // cfg.n_head), cfg.n_kv_head * (cfg.n_embd // cfg.n_head)
    out = {"token_embd.weight": sd["wte.weight"]}
    if arch == "gpt2":
        out["position_embd.weight"] = sd["wpe.weight"]
    for i in range(cfg.n_layer):
        b, g = f"blocks.{i}.", f"blk.{i}."
        if arch == "gpt2":
            names = {
                "attn_norm": "norm1", "attn_qkv": "attn.qkv", "attn_output": "attn.proj",
                "ffn_norm": "norm2", "ffn_up": "mlp.fc", "ffn_down": "mlp.proj",
            }  # fmt: skip
            for theirs, ours in names.items():
                out[g + theirs + ".weight"] = sd[b + ours + ".weight"]
                out[g + theirs + ".bias"] = sd[b + ours + ".bias"]
            continue
        out[g + "attn_norm.weight"] = sd[b + "norm1.weight"]
        q, k, v = sd[b + "attn.qkv.weight"].split([q_rows, kv_rows, kv_rows])
        if arch == "llama":  # llama.cpp's converter permutes LLaMA's q/k; qwen2 is stored as is
            q, k = permute_rope(q, cfg.n_head), permute_rope(k, cfg.n_kv_head)
        out[g + "attn_q.weight"], out[g + "attn_k.weight"], out[g + "attn_v.weight"] = q, k, v
        if cfg.qkv_bias:
            qb, kb, vb = sd[b + "attn.qkv.bias"].split([q_rows, kv_rows, kv_rows])
            out[g + "attn_q.bias"], out[g + "attn_k.bias"], out[g + "attn_v.bias"] = qb, kb, vb
        out[g + "attn_output.weight"] = sd[b + "attn.proj.weight"]
        out[g + "ffn_norm.weight"] = sd[b + "norm2.weight"]
        for theirs, ours in (("ffn_gate", "gate"), ("ffn_up", "up"), ("ffn_down", "down")):
            out[g + theirs + ".weight"] = sd[b + f"mlp.{ours}.weight"]
    out["output_norm.weight"] = sd["norm_f.weight"]
    if arch == "gpt2":
        out["output_norm.bias"] = sd["norm_f.bias"]
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    return out


def _add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> None:
    import gguf

    from danlu.tokenizers.bpe import BPETokenizer

    if not isinstance(tokenizer, BPETokenizer):
        raise DanluError(
            f"GGUF export: the tokenizer is {type(tokenizer).__name__}; GGUF's 'gpt2' tokenizer model holds "
            "byte-level BPE only (export without a tokenizer, or train a BPE one)"
        )
    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    n = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    specials = set(tokenizer.special_tokens.values())
    for i in range(n):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in specials else gguf.TokenType.NORMAL)
        else:  # an embedding row no token uses (vocabularies padded to a multiple of 64, say)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = tokenizer.merges
    merges = merges() if callable(merges) else merges
    writer.add_token_merges([f"{a} {b}" for a, b in merges])
    for role, add in (
        ("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
        ("pad", writer.add_pad_token_id), ("unk", writer.add_unk_token_id),
    ):  # fmt: skip
        token_id = getattr(tokenizer, f"{role}_token_id", None)
        if token_id is not None:
            add(int(token_id))
    writer.add_add_bos_token(
        bool(getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None)
    )
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    writer.add_string("tokenizer.huggingface.json", json.dumps(tokenizer.to_hf_dict(), ensure_ascii=False))


def _encode(name: str, w: torch.Tensor, dtype: str) -> tuple[np.ndarray, Any]:
    """A tensor's bytes for GGUF and its ggml type."""
    import gguf

    arr = w.numpy().astype(np.float32)
    if dtype == "f32" or arr.ndim == 1:
        return arr, gguf.GGMLQuantizationType.F32
    if dtype == "q8_0" and arr.shape[-1] % _Q8_BLOCK == 0:
        q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
        return q, gguf.GGMLQuantizationType.Q8_0
    return arr.astype(np.float16), gguf.GGMLQuantizationType.F16


def export_gguf(
    model: GPT, tokenizer: Any | None, path: str | Path, dtype: str = "f16", name: str = "danlu"
) -> Path:
    """Write `model` (and its tokenizer) as one GGUF file at `path`; returns the path."""
    import gguf

    if dtype not in GGUF_DTYPES:
        raise DanluError(
            f"--dtype: {dtype!r} is not a GGUF export type; choose one of {', '.join(GGUF_DTYPES)}"
        )
    cfg = model.config
    arch = gguf_architecture(cfg)
    path = Path(path)
    if path.suffix != ".gguf":
        raise DanluError(f"--out: {str(path)!r} should end in .gguf (llama.cpp and Ollama look for it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        writer.add_name(name)
        writer.add_file_type(_FILE_TYPE[dtype])
        writer.add_context_length(cfg.block_size)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_block_count(cfg.n_layer)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(cfg.n_head)
        writer.add_vocab_size(cfg.vocab_size)
        if arch == "gpt2":
            writer.add_layer_norm_eps(cfg.norm_eps)
        else:
            writer.add_head_count_kv(cfg.n_kv_head)
            writer.add_layer_norm_rms_eps(cfg.norm_eps)
            writer.add_rope_freq_base(cfg.rope_theta)
            writer.add_rope_dimension_count(cfg.n_embd // cfg.n_head)
        if tokenizer is not None:
            _add_tokenizer(writer, tokenizer, cfg.vocab_size)
        for tensor_name, w in _tensors(model, arch).items():
            data, ggml_type = _encode(tensor_name, w, dtype)
            writer.add_tensor(tensor_name, data, raw_dtype=ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    tmp.replace(path)  # a reader never sees a half-written file
    return path
