"""Input checks shared by the metric modules.

Every metric validates its arguments up front and raises `DanluError` naming the argument, the bad value and
what to do, instead of letting numpy produce a silent NaN or a shape error three frames deep.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from danlu.errors import DanluError


def to_numpy(name: str, values: Any) -> np.ndarray:
    """`values` as a numpy array (a torch tensor is moved to the CPU and detached first)."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # a torch.Tensor, without importing torch
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values)
    except (ValueError, TypeError) as e:
        raise DanluError(f"{name}: cannot be read as an array ({e}); pass a list or 1-D array") from e


def check_labels(name: str, values: Any) -> np.ndarray:
    """A non-empty 1-D array of class labels (ints, strings, bools) without NaN."""
    arr = to_numpy(name, values)
    if arr.ndim != 1:
        raise DanluError(f"{name}: expected a 1-D sequence of labels, got shape {arr.shape}")
    if arr.size == 0:
        raise DanluError(f"{name}: is empty; pass at least one label")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        i = int(np.flatnonzero(np.isnan(arr))[0])
        raise DanluError(f"{name}: contains NaN at index {i}; every label must be a class")
    return arr


def check_scores(name: str, values: Any, ndim: int = 1) -> np.ndarray:
    """A non-empty float array of scores with `ndim` dimensions and no NaN or infinity."""
    arr = to_numpy(name, values)
    if arr.ndim != ndim:
        raise DanluError(f"{name}: expected a {ndim}-D array of scores, got shape {arr.shape}")
    if arr.size == 0:
        raise DanluError(f"{name}: is empty; pass at least one score")
    if arr.dtype.kind not in "biuf":
        raise DanluError(f"{name}: scores must be numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        where = idx[0] if len(idx) == 1 else idx
        raise DanluError(
            f"{name}: contains {arr[idx]} at index {where}; scores must be finite (fix or drop that example)"
        )
    return arr


def check_same_length(**arrays: Sequence[Any] | np.ndarray) -> int:
    """All arguments have the same length; returns it. The error names each argument with its length."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise DanluError(f"length mismatch: {desc}; pass one entry per example in each")
    return next(iter(lengths.values()))
