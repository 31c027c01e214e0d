"""Giving a freshly built model its tensors: shapes checked, no NaN or infinite weight, nothing missing.

Below both readers of weights: checkpoints.py (danlu and Hugging Face folders) and gguf.py (llama.cpp files)
build their models here, so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from danlu.errors import DanluError
from danlu.models.gpt import GPT, GPTConfig


def check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    """A NaN or infinite weight is a corrupt checkpoint: say which tensor at load, not a NaN later in decoding.
    One `isfinite` pass over each floating-point tensor (about as cheap as reading it)."""
    for name, t in tensors.items():
        if t.is_floating_point() and t.device.type != "meta" and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise DanluError(
                f"{source}: tensor {name} holds {bad} NaN or infinite value(s) of {t.numel()}; the weights "
                "are corrupt (a diverged training run or a broken conversion): use another checkpoint"
            )


def assign_weights(build: Callable[[], nn.Module], sd: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Build a model on the meta device (no memory, no init) and give it the tensors of `sd`, checking that
    every tensor it needs is there with the right shape; a DanluError names the first bad tensor."""
    with torch.device("meta"):
        model = build()
    expected = model.state_dict()
    check_finite({k: v for k, v in sd.items() if k in expected}, source)
    for name, t in sd.items():
        if name in expected and tuple(t.shape) != tuple(expected[name].shape):
            raise DanluError(
                f"{source}: tensor {name} has shape {tuple(t.shape)} but the config needs {tuple(expected[name].shape)}"
            )
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise DanluError(
            f"{source}: weights are missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    model.load_state_dict({k: v for k, v in sd.items() if k in expected}, strict=False, assign=True)
    return model


def build_gpt(cfg: GPTConfig, sd: dict[str, torch.Tensor], source: str) -> GPT:
    """A GPT holding the danlu-named tensors `sd` (ties and RoPE tables restored)."""
    model = assign_weights(lambda: GPT(cfg), sd, source)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.wte.weight
    model.init_buffers()  # non-persistent buffers (RoPE tables) were created on meta: rebuild them
    return model
