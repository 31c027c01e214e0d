"""Norm tuning: train a model's normalisation gains alone, every other weight frozen.

Why it is here (issue 21, experiments/README.md "PPO's gain over SFT"): a norm's gain scales the features it
normalises, and the final norm's gain scales every logit, so the gains alone can sharpen or flatten the
model's next-token distributions token by token without the capacity to fit the quirks of a batch. PPO on all
of a 1M-parameter actor spent its KL budget on changes that raised the proxy reward but not the gold one;
on the 1,152 gains of the demo's model it turned the same KL into the sharpening both rewards pay for.
(Tuning only LayerNorm's parameters as a parameter-efficient method: Zhao et al. 2023, "Tuning LayerNorm in
Attention"; BitFit, Ben Zaken et al. 2022, trains the biases alone in the same spirit.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from danlu.errors import DanluError
from danlu.nn.layers import OffsetRMSNorm, RMSNorm

NORMS = (RMSNorm, OffsetRMSNorm, nn.LayerNorm)


def norm_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every norm module of `model` (RMSNorm, Gemma's offset RMSNorm, LayerNorm)."""
    return [p for m in model.modules() if isinstance(m, NORMS) for p in m.parameters(recurse=False)]


@contextmanager
def train_only_norms(model: nn.Module) -> Iterator[int]:
    """Within the block only the norms' parameters require grad (yields how many values that is); on exit each
    parameter's requires_grad is what it was. Raises a DanluError for a model without norms."""
    keep = {id(p) for p in norm_parameters(model)}
    if not keep:
        raise DanluError(
            f"{type(model).__name__} has no norm layers (RMSNorm or LayerNorm) to tune; train all its parameters"
        )
    before = {id(p): p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        yield sum(p.numel() for p in model.parameters() if id(p) in keep)
    finally:
        for p in model.parameters():
            p.requires_grad_(before[id(p)])
