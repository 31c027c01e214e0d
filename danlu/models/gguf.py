"""GGUF -> danlu GPT: LLaMA-family weights from a llama.cpp file (the format itself is read by danlu/gguf.py).

Tensor names: token_embd, blk.N.attn_{q,k,v,output}, blk.N.ffn_{gate,up,down}, blk.N.{attn,ffn}_norm,
output_norm, output (absent when the embedding is tied). LLaMA q/k rows are stored permuted (see
`unpermute_rope`).
"""

from __future__ import annotations

from dataclasses import dataclass
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
           "read_gguf", "config_from_gguf", "unpermute_rope", "state_dict_from_gguf", "load_gguf_model",
           "GGUFSource", "weights_fingerprint", "block_types"]  # fmt: skip


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
    model = model.to(device=device, dtype=dtype or torch.float32).eval()
    model.gguf_source = GGUFSource(str(f.path), frozenset(block_types(f)), weights_fingerprint(model))
    return model


@dataclass(frozen=True)
class GGUFSource:
    """Where a GGUF-loaded model's weights came from, so decoding can read the file's blocks as stored
    (`generate/fast_path.py`): the model *is* those blocks dequantised, as long as its weights are untouched.
    A plain attribute (`model.gguf_source`), not a buffer: state_dict, training and saving never see it."""

    path: str
    block_types: frozenset[str]  # the BLOCK_TYPES its 2-D tensors are stored in
    fingerprint: tuple  # weights_fingerprint(model) right after loading


def weights_fingerprint(model: torch.nn.Module) -> tuple:
    """What changes whenever a weight does: every state_dict entry's name, storage, dtype, device and version
    counter (bumped by every in-place write: an optimizer step, load_state_dict, `copy_`). Non-persistent
    buffers (RoPE tables, regrown for longer contexts) are not weights and do not count. A deep copy has new
    storage, so it does not match the original's fingerprint. Tensors made under `torch.inference_mode()` keep
    no version counter (reading it raises): they count as version -1, writable only inside inference mode."""
    return tuple(
        (name, t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype, str(t.device))
        for name, t in model.state_dict(keep_vars=True).items()
    )


# ----------------------------------------------------------------------------- GGUF blocks, not dequantised
# The block types whose bits danlu's decoding kernels read as stored (generate/quant_kernels.py):
# Q8_0 -> 8-bit codes with one scale per 32; Q4_0 / Q4_1 -> 4-bit codes with a scale and a minimum per 32.
BLOCK_TYPES = ("Q8_0", "Q4_0", "Q4_1")


def block_types(f: GGUFFile) -> set[str]:
    """The BLOCK_TYPES a GGUF file's 2-D tensors are stored in (empty when none are)."""
    return {t.type_name for t in f.tensors.values() if len(t.shape) == 2} & set(BLOCK_TYPES)


def gguf_blocks(f: GGUFFile, name: str) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """(bits, codes, scale, minimum) of 2-D tensor `name` as stored, or None when its type is not a BLOCK_TYPE.

    codes: Q8_0 int8 (N, K); Q4_* uint8 (N, K/2), byte j of a block = element j | element j + 16 << 4 (ggml's
    order). scale and minimum: (N, K/32) float16, W = scale · q + minimum (Q4_0: minimum = −8 · scale; Q8_0:
    none). The bytes are copied out of the memory map, never expanded.
    """
    import numpy as np

    t = f.tensors[name]
    kind = t.type_name
    if kind not in BLOCK_TYPES or len(t.shape) != 2:
        return None
    N, K = t.shape
    _, block, size = GGML_TYPES[t.ggml_type]
    b = np.asarray(f.raw(name), dtype=np.uint8).reshape(N * K // block, size)  # one row per block

    def f16(start: int) -> torch.Tensor:
        return torch.from_numpy(b[:, start : start + 2].copy().view(np.float16)).view(N, K // block)

    scale = f16(0)
    if kind == "Q8_0":
        return 8, torch.from_numpy(b[:, 2:34].copy().view(np.int8)).view(N, K), scale, None
    if kind == "Q4_0":
        return 4, torch.from_numpy(b[:, 2:18].copy()).view(N, K // 2), scale, -8 * scale
    return 4, torch.from_numpy(b[:, 4:20].copy()).view(N, K // 2), scale, f16(2)


def linear_blocks_from_gguf(f: GGUFFile, cfg: GPTConfig) -> tuple[dict[str, tuple], dict[str, str]]:
    """The danlu GPT's linear layers as GGUF blocks: ({module name: (bits, codes, scale, minimum)},
    {module name: why it has none}). q/k rows are un-permuted and q, k, v stacked, codes and scales alike; a
    tied lm_head takes token_embd's blocks."""
    permuted = f.metadata.get("general.architecture") in ("llama", "mistral")
    blocks: dict[str, tuple] = {}
    missing: dict[str, str] = {}

    def get(name: str):
        if name not in f.tensors:
            raise DanluError(
                f"{f.path}: tensor {name} is missing; the GGUF file does not hold a complete model"
            )
        got = gguf_blocks(f, name)
        if got is None:
            return None, f"{name} is {f.tensors[name].type_name}"
        return got, ""

    head = "output.weight" if "output.weight" in f.tensors else "token_embd.weight"
    for ours, theirs in [("lm_head", head)] + [
        (f"blocks.{i}.{o}", f"blk.{i}.{t}.weight")
        for i in range(cfg.n_layer)
        for o, t in (
            ("attn.proj", "attn_output"),
            ("mlp.gate", "ffn_gate"),
            ("mlp.up", "ffn_up"),
            ("mlp.down", "ffn_down"),
        )  # fmt: skip
    ]:
        got, why = get(theirs)
        if got is None:
            missing[ours] = why
        else:
            blocks[ours] = got
    for i in range(cfg.n_layer):
        parts = [get(f"blk.{i}.attn_{x}.weight") for x in "qkv"]
        kinds = {p[0][0] if p[0] else None for p in parts}
        if any(p[0] is None for p in parts) or len(kinds) != 1:
            missing[f"blocks.{i}.attn.qkv"] = "; ".join(
                why or f"blk.{i}.attn_{x} is {f.tensors[f'blk.{i}.attn_{x}.weight'].type_name}"
                for (_, why), x in zip(parts, "qkv")
            )
            continue
        (bits, *_), heads = parts[0][0], (cfg.n_head, cfg.n_kv_head, None)
        stacked = []
        for j in range(1, 4):  # codes, scale, minimum: the same rows in each
            rows = [p[0][j] for p in parts]
            if rows[0] is None:
                stacked.append(None)
                continue
            if permuted:
                rows = [unpermute_rope(r, h) if h else r for r, h in zip(rows, heads)]
            stacked.append(torch.cat(rows))
        blocks[f"blocks.{i}.attn.qkv"] = (bits, *stacked)
    return blocks, missing
