"""Checkpoints: one directory holds a model (and its tokenizer), loadable by danlu and, where the shape is one
Hugging Face knows, by `transformers` too.

Layout (see docs/ARCHITECTURE.md):
  config.json              HF fields (model_type gpt2 / llama / qwen2) plus a "danlu" block with the exact GPTConfig;
                           models HF cannot express are saved with model_type "danlu-gpt" and danlu tensor names
  model.safetensors        weights (never pickles: safetensors only)
  tokenizer.json           HF tokenizer format, when a tokenizer is saved with the model
  generation_config.json   eos / pad ids for generation
Writes are atomic: the directory is filled under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from danlu.errors import DanluError
from danlu.fileio import atomic_dir
from danlu.models.gpt import GPT, GPTConfig
from danlu.models.hf_gpt import (
    LLAMA_FAMILY,
    config_from_hf,
    config_to_hf,
    state_dict_from_hf,
    state_dict_to_hf,
)

NATIVE_TYPE = "danlu-gpt"
SUPPORTED_TYPES = ["gpt2", *LLAMA_FAMILY, NATIVE_TYPE]


def save_model(
    model: GPT, path: str | Path, tokenizer: Any = None, extra_files: dict[str, str] | None = None
) -> Path:
    """Write `model` (and `tokenizer`, if given) to the checkpoint directory `path`, atomically."""
    cfg = model.config
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    try:
        hf_config = config_to_hf(cfg)
        tensors = state_dict_to_hf(sd, cfg)
    except DanluError:  # a shape no HF class describes: keep danlu's own names
        hf_config = {"model_type": NATIVE_TYPE}
        tensors = {k: v for k, v in sd.items() if not (cfg.tie_embeddings and k == "lm_head.weight")}
    config = {**hf_config, "torch_dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    config["danlu"] = {"family": "gpt", "config": cfg.to_dict()}
    gen = {}
    if tokenizer is not None:
        gen = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
        if tokenizer.bos_token_id is not None:
            gen["bos_token_id"] = tokenizer.bos_token_id
        config.update(gen)
    path = Path(path)
    with atomic_dir(path) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        if tokenizer is not None:
            tokenizer.save(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return path


def read_config(path: Path) -> dict[str, Any]:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise DanluError(
            f"{path} is not a checkpoint: it has no config.json. A checkpoint directory holds config.json and "
            "model.safetensors (from `danlu pretrain` or a Hugging Face model folder)"
        )
    try:
        return json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DanluError(f"{cfg_file} is not valid JSON ({e}); the checkpoint is corrupt, re-save it") from e


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` or of a sharded `model-0000x-of-0000y.safetensors` set."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise DanluError(
            f"{path} has no *.safetensors weights; danlu reads safetensors only (never pickled .bin files): "
            "convert them with `transformers` (save_pretrained(..., safe_serialization=True))"
        )
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:
            raise DanluError(
                f"{f} is not a readable safetensors file ({e}); the checkpoint is corrupt"
            ) from e
    return tensors


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> GPT:
    """A GPT from a danlu checkpoint or a Hugging Face GPT-2 / LLaMA / Qwen2 / SmolLM directory."""
    path = Path(path)
    if not path.exists():
        raise DanluError(f"checkpoint {path} does not exist")
    if path.is_file():
        raise DanluError(f"{path} is a file; pass the checkpoint directory (holding config.json)")
    hf = read_config(path)
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_TYPES:
        raise DanluError(
            f"{path}: unsupported architecture model_type={model_type!r}; supported: {SUPPORTED_TYPES}"
        )
    danlu_block = hf.get("danlu", {}).get("config")
    cfg = GPTConfig.from_dict(danlu_block) if danlu_block else config_from_hf(hf)
    tensors = read_safetensors(path)
    if model_type == NATIVE_TYPE:
        sd = tensors
        if cfg.tie_embeddings:
            sd.setdefault("lm_head.weight", sd.get("wte.weight"))
    else:
        try:
            sd = state_dict_from_hf(model_type, tensors, cfg)
        except KeyError as e:
            raise DanluError(
                f"{path}: tensor {e} is missing from the weights for a {model_type} model"
            ) from e
    with torch.device("meta"):
        model = GPT(cfg)
    expected = model.state_dict()
    for name, t in sd.items():
        if name in expected and tuple(t.shape) != tuple(expected[name].shape):
            raise DanluError(
                f"{path}: tensor {name} has shape {tuple(t.shape)} but the config needs {tuple(expected[name].shape)}"
            )
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise DanluError(
            f"{path}: weights are missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    model.load_state_dict(sd, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.wte.weight
    if cfg.position == "rope":  # non-persistent buffers were created on meta: rebuild them
        from danlu.nn.position import rope_cache

        model.rope_cos, model.rope_sin = rope_cache(cfg.block_size, cfg.head_size, cfg.rope_theta)
    model = model.to(device=device, dtype=dtype or torch.float32)
    return model.eval()


def load(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """`(model, tokenizer)` from a checkpoint directory; the tokenizer is None when the folder has none."""
    path = Path(path)
    model = load_model(path, device=device, dtype=dtype)
    tokenizer = None
    if (path / "tokenizer.json").is_file():
        from danlu.tokenizers.base import Tokenizer

        tokenizer = Tokenizer.load(path)
    return model, tokenizer


def save(model: GPT, tokenizer: Any, path: str | Path) -> Path:
    """`danlu.save(model, tokenizer, dir)`: the model and its tokenizer in one checkpoint directory."""
    return save_model(model, path, tokenizer=tokenizer)
