"""Type and range checks for model configs, which come from untrusted config.json files.

Every model config dataclass calls `check_fields(self, "GPT config")` first in `__post_init__`, so a config
built from a file, a GGUF header or Python gets the same checks: each field has the type its annotation says
(an int is accepted for a float, a bool never for an int) and lies in `RANGES`. The Hugging Face mappings
(hf_gpt.py, hf_bert.py) call `hf_value` so that a bad value is named by the file's own field name.
Limits are generous (several times the largest published model) and exist so that no size read from a file
can make danlu allocate without bound or overflow an index.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any, ClassVar, TypeVar

from danlu.errors import DanluError

MAX_CONTEXT = 1 << 30  # block_size / max_position_embeddings / context_length (position tables are lazy)
MAX_VOCAB = 1 << 24  # vocab_size (the largest published vocabularies hold ~256k tokens)
MAX_WIDTH = 1 << 16  # n_embd / hidden_size and the MLP width's base
MAX_LAYERS = 1024

# field name -> (lowest, highest) allowed value, inclusive
RANGES: dict[str, tuple[float, float]] = {
    "vocab_size": (1, MAX_VOCAB),
    "block_size": (1, MAX_CONTEXT),
    "n_layer": (1, MAX_LAYERS),
    "n_decoder_layer": (1, MAX_LAYERS),
    "n_head": (1, MAX_WIDTH),
    "n_kv_head": (1, MAX_WIDTH),
    "n_embd": (1, MAX_WIDTH),
    "intermediate_size": (1, 16 * MAX_WIDTH),
    "type_vocab_size": (1, 1 << 16),
    "num_labels": (1, 1 << 20),
    "norm_eps": (0.0, 1.0),
    "rope_theta": (1.0, 1e12),
    "rope_local_theta": (1.0, 1e12),
    "head_dim": (1, MAX_WIDTH),
    "sliding_window": (1, MAX_CONTEXT),
    "embedding_scale": (1e-6, 1e6),
    "query_scale": (1e-6, 1e6),
    "attn_logit_softcap": (1e-3, 1e6),
    "final_logit_softcap": (1e-3, 1e6),
    "dropout": (0.0, 1.0),
    "label_smoothing": (0.0, 1.0),
    "p_uncond": (0.0, 1.0),
    "pad_token_id": (0, MAX_VOCAB),
    "bos_token_id": (0, MAX_VOCAB),
    "eos_token_id": (0, MAX_VOCAB),
    "image_size": (1, 1 << 14),
    "patch_size": (1, 1 << 14),
    "channels": (1, 64),
    "n_classes": (0, 1 << 20),
    "text_embd": (1, MAX_WIDTH),
    "text_layer": (1, MAX_LAYERS),
    "text_head": (1, MAX_WIDTH),
    "embed_dim": (1, MAX_WIDTH),
    "base": (1, 1 << 12),
    "n_shapes": (1, 1 << 16),
    "n_colours": (1, 1 << 16),
    "n_steps": (1, 1 << 20),
    "beta_start": (0.0, 1.0),
    "beta_end": (0.0, 1.0),
}

_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "None": type(None), "dict": dict}


def type_problem(value: Any, annotation: str) -> str | None:
    """Why value does not fit annotation ("int", "float", "bool | None", "dict[str, str] | None"), or None.
    Annotations naming other classes (a nested config) are not checked here."""
    names = [a.strip().split("[")[0] for a in annotation.split("|")]
    if any(n not in _TYPES for n in names):
        return None
    for n in names:
        if n == "int" and isinstance(value, int) and not isinstance(value, bool):
            return None
        if n == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return None if math.isfinite(value) else "must be a finite number"
        if n not in ("int", "float") and isinstance(value, _TYPES[n]):
            return None
    return f"must be {' or '.join('null' if n == 'None' else n for n in names)}"


def range_problem(name: str, value: Any) -> str | None:
    if name not in RANGES or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    lo, hi = RANGES[name]
    if not lo <= value <= hi:
        return f"must be in [{lo}, {hi}]"
    return None


def check_fields(cfg: Any, what: str) -> None:
    """Raise one DanluError listing every field of the dataclass `cfg` of the wrong type or out of range."""
    problems = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        why = type_problem(value, str(f.type)) or range_problem(f.name, value)
        if why:
            problems.append(f"{f.name} {why}, got {_show(value)}")
    if problems:
        raise DanluError(f"bad {what}: " + "; ".join(problems))


def config_from_dict(cls: type, d: Any, what: str) -> Any:
    """`cls(**d)` for a dict read from a file: d must be an object, and every key a field of cls."""
    if not isinstance(d, dict):
        raise DanluError(f"the {what} should be a JSON object, found {_show(d)}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(d) - known)
    if unknown:
        raise DanluError(f"{what} has unknown fields {unknown}; known fields: {sorted(known)}")
    return cls(**d)


_C = TypeVar("_C", bound="PresetConfig")


class PresetConfig:
    """`from_name` / `to_dict` / `from_dict` for a model config dataclass with named presets, written once for
    the GPT, BERT and seq2seq configs. The presets are the `PRESETS` dict of the module that defines the class
    (read at call time, as a module-level name would be); `preset_kind` names them in the unknown-preset
    error and `config_name` names the config in `config_from_dict`'s."""

    preset_kind: ClassVar[str] = "model"
    config_name: ClassVar[str] = "config"

    @classmethod
    def presets(cls) -> dict[str, dict[str, Any]]:
        return sys.modules[cls.__module__].PRESETS

    @classmethod
    def from_name(cls: type[_C], name: str, **overrides: Any) -> _C:
        presets = cls.presets()
        if name not in presets:
            raise DanluError(f"unknown {cls.preset_kind} preset {name!r}; choose one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # a dataclass subclass: asdict copies nested lists and dicts

    @classmethod
    def from_dict(cls: type[_C], d: dict[str, Any]) -> _C:
        return config_from_dict(cls, d, cls.config_name)


_MISSING = object()


def hf_value(
    hf: dict[str, Any], key: str, annotation: str = "int", default: Any = _MISSING, field: str = ""
) -> Any:
    """hf[key] checked against annotation and the range of danlu field `field` (default: key), with a
    DanluError naming the file's own field name when it is missing or bad."""
    if key not in hf or hf[key] is None:
        if default is _MISSING:
            raise DanluError(f"field {key} is missing")
        return default
    value = hf[key]
    why = type_problem(value, annotation) or range_problem(field or key, value)
    if why:
        raise DanluError(f"field {key} {why}, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:80]}" if not isinstance(value, (int, float)) else text[:80]
