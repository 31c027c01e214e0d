"""Bootstrap confidence intervals for a metric over items (Efron 1979; percentile method).

An accuracy over n items is a mean of 0/1 scores; how far it may be from the accuracy on all such items is what
its interval says. Resample the n per-item scores with replacement many times, recompute the mean each time, and
take the (1 − c)/2 and (1 + c)/2 quantiles of those means: the percentile bootstrap interval at confidence c.
It needs no normal approximation, so it stays inside [0, 1] for accuracies near 0 or 1 (where the Wald interval
p ± 1.96·√(p(1−p)/n) does not) — but an accuracy of exactly 0 or 1 gives the zero-width interval [p, p]: no
resample can differ, which says the items carry no spread, not that the true accuracy is certain.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from danlu.errors import DanluError

MAX_RESAMPLES = 100_000


def bootstrap_ci(
    scores: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of the per-item `scores` and its percentile bootstrap interval."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise DanluError(f"bootstrap_ci needs a non-empty list of per-item scores, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise DanluError("bootstrap_ci: a score is NaN or infinite; score every item with a number")
    if not 0 < confidence < 1:
        raise DanluError(f"confidence must be in (0, 1), got {confidence}")
    if not 1 <= n_resamples <= MAX_RESAMPLES:
        raise DanluError(f"n_resamples must be in [1, {MAX_RESAMPLES}], got {n_resamples}")
    rng = np.random.default_rng(seed)
    n = values.size
    means = np.empty(n_resamples)
    # in chunks, so n_resamples × n indices never sit in memory at once
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(values.mean()), float(low), float(high)


def format_ci(mean: float, low: float, high: float, digits: int = 2) -> str:
    """'0.43 [0.36, 0.50]' for a report's table cell."""
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
