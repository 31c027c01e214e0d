"""Checkpoints: one directory holds a model (and its tokenizer), loadable by danlu and, where the shape is one
Hugging Face knows, by `transformers` too.

Layout (see docs/ARCHITECTURE.md):
  config.json              HF fields (model_type gpt2 / llama / qwen2 / bert) plus a "danlu" block with the exact
                           config; GPTs HF cannot express are saved with model_type "danlu-gpt" and danlu tensor
                           names, the encoder-decoder Transformer as "danlu-seq2seq"
  model.safetensors        weights (never pickles: safetensors only)
  tokenizer.json           HF tokenizer format, when a tokenizer is saved with the model
  generation_config.json   eos / pad ids for generation
Writes are atomic: the directory is filled under a temporary name and renamed into place.
Reads: Hugging Face folders (sharded safetensors too) and `.gguf` files (danlu/models/gguf.py); never pickles.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

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
from danlu.models.weights import assign_weights, build_gpt

NATIVE_TYPE = "danlu-gpt"
SEQ2SEQ_TYPE = "danlu-seq2seq"
SUPPORTED_TYPES = ["gpt2", *LLAMA_FAMILY, "bert", NATIVE_TYPE, SEQ2SEQ_TYPE]


def save_model(
    model: nn.Module, path: str | Path, tokenizer: Any = None, extra_files: dict[str, str] | None = None
) -> Path:
    """Write `model` (and `tokenizer`, if given) to the checkpoint directory `path`, atomically.

    A GPT is saved as GPT-2 / LLaMA / Qwen2 when its shape is one of theirs, a BERT as a Hugging Face BERT,
    the seq2seq Transformer in danlu's own layout ("danlu-seq2seq").
    """
    config, tensors = _describe(model)
    config["torch_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
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


def _describe(model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json content, tensors to save) for any danlu model."""
    from danlu.models import hf_bert
    from danlu.models.seq2seq import Transformer

    cfg = model.config
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if isinstance(model, GPT):
        try:
            hf_config = config_to_hf(cfg)
            tensors = state_dict_to_hf(sd, cfg)
        except DanluError:  # a shape no HF class describes: keep danlu's own names
            hf_config = {"model_type": NATIVE_TYPE}
            tensors = {k: v for k, v in sd.items() if not (cfg.tie_embeddings and k == "lm_head.weight")}
        return {**hf_config, "danlu": {"family": "gpt", "config": cfg.to_dict()}}, tensors
    if isinstance(model, Transformer):
        return {"model_type": SEQ2SEQ_TYPE, "danlu": {"family": "seq2seq", "config": cfg.to_dict()}}, sd
    head = hf_bert.head_name(model)  # raises for a class danlu cannot save
    danlu_block = {"family": "bert", "head": head, "config": cfg.to_dict()}
    return {**hf_bert.config_to_hf(cfg, head), "danlu": danlu_block}, hf_bert.state_dict_to_hf(sd, cfg, head)


def read_config(path: Path) -> dict[str, Any]:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise DanluError(
            f"{path} is not a checkpoint: it has no config.json. A checkpoint directory holds config.json and "
            "model.safetensors (from `danlu pretrain` or a Hugging Face model folder)"
        )
    try:
        data = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise DanluError(f"{cfg_file} is not valid JSON ({e}); the checkpoint is corrupt, re-save it") from e
    if not isinstance(data, dict):
        raise DanluError(
            f"{cfg_file} should hold a JSON object (with model_type and the model's sizes), found "
            f"{type(data).__name__} {json.dumps(data)[:80]}; the checkpoint is corrupt, re-save it"
        )
    return data


@contextmanager
def naming(file: Path | str) -> Iterator[None]:
    """Prefix a DanluError raised inside with the file it is about (a config error names config.json)."""
    try:
        yield
    except DanluError as e:
        raise DanluError(f"{file}: {e}") from e


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` or of a sharded `model-0000x-of-0000y.safetensors` set."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise DanluError(
            f"{path} has no *.safetensors weights; danlu reads safetensors only (never pickled .bin files): "
            "convert them with `transformers` (save_pretrained(..., safe_serialization=True))"
        )
    index = path / "model.safetensors.index.json"
    if index.is_file():  # a sharded checkpoint: every shard the index names must be there
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError, AttributeError, TypeError) as e:
            raise DanluError(
                f"{index} is not a valid safetensors index ({e}); copy the checkpoint again"
            ) from e
        for s in shards:  # plain file names in this folder: an index must not point elsewhere ("../x")
            if not isinstance(s, str) or Path(s).name != s or not s.endswith(".safetensors"):
                raise DanluError(f"{index} names the shard {s!r}, not a .safetensors file in {path}")
        absent = [s for s in shards if not (path / s).is_file()]
        if absent:
            raise DanluError(f"{path}: shard(s) {absent} listed in {index.name} are missing; copy them too")
        files = [path / s for s in shards]
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:
            raise DanluError(
                f"{f} is not a readable safetensors file ({e}); the checkpoint is corrupt"
            ) from e
    return tensors


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> nn.Module:
    """A model from a danlu checkpoint, a Hugging Face GPT-2 / LLaMA / Qwen2 / Qwen3 / Mistral / Phi-3 / OLMo-2 /
    Gemma-2 / Gemma-3 / SmolLM / BERT directory, or a `.gguf` file (LLaMA-family, dequantised to float32).
    Any other `model_type` is a DanluError listing the supported ones."""
    path = Path(path)
    if not path.exists():
        raise DanluError(f"checkpoint {path} does not exist")
    if path.is_file():
        if path.suffix == ".gguf":
            from danlu.models.gguf import load_gguf_model

            return load_gguf_model(path, device=device, dtype=dtype)
        raise DanluError(
            f"{path} is a file; pass the checkpoint directory (holding config.json) or a .gguf file"
        )
    hf = read_config(path)
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_TYPES:
        raise DanluError(
            f"{path}: unsupported architecture model_type={model_type!r}; supported: {SUPPORTED_TYPES}"
        )
    danlu_block = hf.get("danlu") or {}
    if not isinstance(danlu_block, dict) or not isinstance(danlu_block.get("config", {}), dict):
        raise DanluError(
            f'{path / "config.json"}: its "danlu" block should be an object with a config object'
        )
    tensors = read_safetensors(path)
    if model_type == "bert":
        model = _load_bert(path, hf, danlu_block, tensors)
    elif model_type == SEQ2SEQ_TYPE:
        from danlu.models.seq2seq import Seq2SeqConfig, Transformer

        with naming(path / "config.json"):
            cfg = Seq2SeqConfig.from_dict(danlu_block.get("config", {}))
        model = assign_weights(lambda: Transformer(cfg), tensors, str(path))
        model.init_buffers()
    else:
        model = _load_gpt(path, hf, danlu_block, tensors)
    return model.to(device=device, dtype=dtype or torch.float32).eval()


def _load_gpt(path: Path, hf: dict[str, Any], danlu_block: dict[str, Any], tensors: dict) -> GPT:
    model_type = hf["model_type"]
    with naming(path / "config.json"):
        cfg = GPTConfig.from_dict(danlu_block["config"]) if danlu_block.get("config") else config_from_hf(hf)
    if model_type == NATIVE_TYPE:
        sd = tensors
        if cfg.tie_embeddings and "wte.weight" in sd:
            sd.setdefault("lm_head.weight", sd["wte.weight"])
    else:
        try:
            sd = state_dict_from_hf(model_type, tensors, cfg)
        except KeyError as e:
            raise DanluError(
                f"{path}: tensor {e} is missing from the weights for a {model_type} model"
            ) from e
        except (RuntimeError, IndexError) as e:  # q/k/v that cannot be fused: shapes that fit no config
            raise DanluError(f"{path}: the weights do not fit config.json ({str(e)[:200]})") from e
    return build_gpt(cfg, sd, str(path))


# Hugging Face BERT classes danlu loads, and which of its heads each becomes.
BERT_ARCHITECTURES = {
    "BertModel": "base",
    "BertForPreTraining": "pretraining",
    "BertForMaskedLM": "pretraining",
    "BertForSequenceClassification": "classification",
}


def _load_bert(path: Path, hf: dict[str, Any], danlu_block: dict[str, Any], tensors: dict) -> nn.Module:
    from danlu.models import hf_bert
    from danlu.models.bert import BertConfig

    if danlu_block.get("config"):
        with naming(path / "config.json"):
            cfg, head = BertConfig.from_dict(danlu_block["config"]), danlu_block.get("head")
        if not isinstance(head, str) or head not in hf_bert.HEADS:
            raise DanluError(
                f"{path / 'config.json'}: danlu.head {head!r} is not one of {sorted(hf_bert.HEADS)}"
            )
    else:
        with naming(path / "config.json"):
            cfg = hf_bert.config_from_hf(hf)
        names = {k.removeprefix("bert.") for k in tensors}
        archs = hf.get("architectures") or []
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise DanluError(f"{path / 'config.json'}: field architectures should be a list of class names")
        head = BERT_ARCHITECTURES.get(archs[0]) if archs else hf_bert.head_of(names)
        if head is None:
            raise DanluError(
                f"{path}: BERT architecture {archs[0]!r} is not supported; supported: {sorted(BERT_ARCHITECTURES)}"
            )
        cfg.with_nsp = "cls.seq_relationship.weight" in names
    try:
        sd = hf_bert.state_dict_from_hf(tensors, cfg, head)
    except KeyError as e:
        raise DanluError(f"{path}: tensor {e} is missing from the weights for a BERT ({head}) model") from e
    except (RuntimeError, IndexError) as e:  # q/k/v that cannot be fused: shapes that fit no config
        raise DanluError(f"{path}: the weights do not fit config.json ({str(e)[:200]})") from e
    return assign_weights(lambda: hf_bert.build(cfg, head), sd, str(path))


def load(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """`(model, tokenizer)` from a checkpoint directory or a `.gguf` file (whose metadata holds the
    tokenizer); the tokenizer is None when a folder has no tokenizer.json."""
    path = Path(path)
    model = load_model(path, device=device, dtype=dtype)
    tokenizer = None
    if path.is_file() or (path / "tokenizer.json").is_file():
        from danlu.tokenizers.base import Tokenizer

        tokenizer = Tokenizer.load(path)
    return model, tokenizer


def save(model: nn.Module, tokenizer: Any, path: str | Path) -> Path:
    """`danlu.save(model, tokenizer, dir)`: the model and its tokenizer in one checkpoint directory."""
    return save_model(model, path, tokenizer=tokenizer)
