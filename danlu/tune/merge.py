"""`danlu merge-lora`: fold a LoRA adapter into its base model and save one plain checkpoint.

LoRA (Hu et al. 2021, §4.1) trains W' = W + (alpha / r) · B A and leaves W alone, so what SFT with `--lora`
writes is the adapter (OUT/adapter, PEFT's layout): a few MB that need their base to mean anything. Merging
computes W' once per adapted layer; the merged model is an ordinary checkpoint (no adapter code, no extra
latency) that `danlu chat`, `danlu serve`, `danlu export` and transformers load.

The merged weights are saved in the base's own dtype (a bf16 folder stays bf16; a quantised GGUF becomes f16,
the precision its dequantised blocks carry), not the float32 training copy: SmolLM2-135M is 270 MB in f16,
538 MB in f32. The adapter names its base in `adapter_config.json` (`base_model_name_or_path`, as PEFT does);
merging onto a base it does not fit is an error naming both.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from danlu.errors import DanluError

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
_HF_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_GGUF_FLOAT = {0: torch.float32, 1: torch.float16, 30: torch.bfloat16}  # ggml types F32, F16, BF16


def base_dtype(path: str | Path) -> torch.dtype:
    """The dtype a model's weights are stored in: config.json's `torch_dtype` for a folder; for a GGUF file
    the type holding most of its parameters (quantised blocks count as float16, the type of their scales)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        from danlu.gguf import read_gguf

        counts: dict[torch.dtype, int] = {}
        for t in read_gguf(path).tensors.values():
            n = 1
            for d in t.shape:
                n *= d
            dtype = _GGUF_FLOAT.get(t.ggml_type, torch.float16)
            counts[dtype] = counts.get(dtype, 0) + n
        return max(counts, key=counts.get) if counts else torch.float32
    try:
        name = json.loads((path / "config.json").read_text()).get("torch_dtype")
    except (OSError, ValueError, AttributeError):
        name = None
    return _HF_DTYPES.get(name, torch.float32)


def base_label(path: str | Path) -> str:
    """How an adapter names its base: the path as given (PEFT stores the name or path passed to
    `from_pretrained`); compared by its last component, so a moved copy of the same file still matches."""
    return str(path)


def _same_base(a: str, b: str) -> bool:
    return Path(a.rstrip("/")).name.lower() == Path(b.rstrip("/")).name.lower()


def read_adapter_base(adapter: str | Path) -> str | None:
    """`base_model_name_or_path` of an adapter folder (None when it names none)."""
    cfg = Path(adapter) / "adapter_config.json"
    if not cfg.is_file():
        raise DanluError(f"{adapter} is not a LoRA adapter folder: adapter_config.json is missing")
    try:
        conf = json.loads(cfg.read_text())
    except ValueError as e:
        raise DanluError(f"{cfg} is not valid JSON ({e})") from e
    name = conf.get("base_model_name_or_path") if isinstance(conf, dict) else None
    return name if isinstance(name, str) and name else None


def attach_adapter(model: nn.Module, adapter: str | Path, base: str | Path) -> None:
    """Load `adapter` onto `model` (loaded from `base`); an adapter that does not fit is an error naming the
    base it was trained on and the one given. A fitting adapter whose recorded base has another name is
    attached with a warning (the same weights may live under another file name)."""
    from danlu.tune.lora import load_adapter

    trained_on = read_adapter_base(adapter)
    try:
        load_adapter(model, adapter)
    except DanluError as e:
        raise DanluError(
            f"the adapter {adapter} was trained on {trained_on or 'an unnamed base'} and does not fit the base "
            f"{base}: {e}; pass the model it was trained on as --model"
        ) from e
    if trained_on is not None and not _same_base(trained_on, str(base)):
        print(
            f"warning: the adapter {adapter} was trained on {trained_on}, merging it onto {base} (its shapes "
            "fit; make sure it is the same model)",
            file=sys.stderr,
        )


def merged_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The model with every LoRA layer folded in (a QLoRA base is dequantised first), cast to `dtype`."""
    from danlu.tune.lora import merge_and_unload

    return merge_and_unload(model).to(dtype)


def merge_lora(
    base: str | Path, adapter: str | Path, out: str | Path, dtype: str | None = None
) -> tuple[Path, torch.dtype]:
    """Merge the adapter at `adapter` into the model at `base` and save it to `out` (a checkpoint folder),
    in `dtype` ("f32", "bf16", "f16") or else the base's own dtype. Returns (out, the dtype written)."""
    from danlu.models.checkpoints import load, save_model

    if dtype is not None and dtype not in DTYPES:
        raise DanluError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    read_adapter_base(adapter)  # a bad adapter folder fails before the base is loaded
    target = DTYPES[dtype] if dtype else base_dtype(base)
    model, tokenizer = load(base)
    attach_adapter(model, adapter, base)
    return save_model(merged_model(model, target), out, tokenizer=tokenizer), target
