"""Preference ranking: pairwise win rates, online Elo and Bradley–Terry strengths with bootstrap intervals.

Note 002 names preference ranking among the evaluation kinds (§偏好排序任务): people (or a judge model) compare
two models' answers to the same prompt and say which is better, or call it a tie. From such comparisons:

- win rate of a model = (wins + ½ ties) / comparisons it took part in;
- online Elo (as Chatbot Arena first reported it): every comparison moves both ratings by
  K · (S − E), with E = 1 / (1 + BASE^((R_other − R_self) / SCALE)) and S = 1, ½ or 0; the result depends on
  the order of the comparisons, which is why the leaderboard moved to
- Bradley–Terry (1952): P(i beats j) = σ(θ_i − θ_j). The strengths θ maximise the likelihood of the observed
  outcomes (a tie counts as half a win for each side), found here by Newton's method on the concave
  log-likelihood with Σθ = 0 fixing the free constant; shown on the Elo scale INIT + SCALE · θ / ln(BASE).
  Confidence intervals come from refitting on bootstrap resamples of the comparisons.

A comparison is (model_a, model_b, winner) with winner "a", "b" or "tie" (also "model_a" / "model_b").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from danlu.errors import DanluError

__all__ = [
    "Comparison",
    "Leaderboard",
    "read_comparisons",
    "win_rates",
    "online_elo",
    "bradley_terry",
    "leaderboard",
    "plot_leaderboard",
]

# Chatbot Arena's constants.
ELO_K, ELO_SCALE, ELO_BASE, ELO_INIT = 4.0, 400.0, 10.0, 1000.0
_WINNER_SCORE = {"a": 1.0, "model_a": 1.0, "b": 0.0, "model_b": 0.0, "tie": 0.5}


@dataclass(frozen=True)
class Comparison:
    model_a: str
    model_b: str
    score_a: float  # 1 when model_a won, 0 when model_b won, ½ for a tie


def read_comparisons(
    records: Iterable[tuple[str, str, str] | dict], models: Sequence[str] | None = None
) -> list[Comparison]:
    """Validate (model_a, model_b, winner) tuples or {"model_a", "model_b", "winner"} dicts.

    With `models` given, a record naming any other model is an error (a typo would otherwise add a phantom
    entry to the leaderboard).
    """
    known = set(models) if models is not None else None
    out = []
    for i, rec in enumerate(records):
        if isinstance(rec, dict):
            missing = [k for k in ("model_a", "model_b", "winner") if k not in rec]
            if missing:
                raise DanluError(f"comparisons[{i}]: missing field(s) {', '.join(missing)}")
            a, b, w = rec["model_a"], rec["model_b"], rec["winner"]
        else:
            a, b, w = rec
        if not isinstance(a, str) or not isinstance(b, str) or not a or not b:
            raise DanluError(f"comparisons[{i}]: model names must be non-empty strings, got {a!r} and {b!r}")
        if a == b:
            raise DanluError(f"comparisons[{i}]: compares {a!r} with itself; a comparison needs two models")
        if known is not None:
            for name in (a, b):
                if name not in known:
                    raise DanluError(
                        f"comparisons[{i}]: unknown model {name!r}; the models are {', '.join(sorted(known))}"
                    )
        if w not in _WINNER_SCORE:
            raise DanluError(f"comparisons[{i}]: winner must be 'a', 'b' or 'tie', got {w!r}")
        out.append(Comparison(a, b, _WINNER_SCORE[w]))
    if not out:
        raise DanluError("comparisons: is empty; pass at least one comparison")
    return out


def _names(comparisons: Sequence[Comparison]) -> list[str]:
    return sorted({c.model_a for c in comparisons} | {c.model_b for c in comparisons})


def win_rates(comparisons: Sequence[Comparison]) -> dict[str, float]:
    """(wins + ½ ties) / comparisons, per model."""
    points: dict[str, float] = {}
    games: dict[str, int] = {}
    for c in comparisons:
        for name, s in ((c.model_a, c.score_a), (c.model_b, 1.0 - c.score_a)):
            points[name] = points.get(name, 0.0) + s
            games[name] = games.get(name, 0) + 1
    return {name: points[name] / games[name] for name in sorted(points)}


def online_elo(
    comparisons: Sequence[Comparison],
    k: float = ELO_K,
    scale: float = ELO_SCALE,
    base: float = ELO_BASE,
    init: float = ELO_INIT,
) -> dict[str, float]:
    """Sequential Elo ratings after playing the comparisons in order."""
    rating = {name: init for name in _names(comparisons)}
    for c in comparisons:
        ra, rb = rating[c.model_a], rating[c.model_b]
        expected_a = 1.0 / (1.0 + base ** ((rb - ra) / scale))
        rating[c.model_a] = ra + k * (c.score_a - expected_a)
        rating[c.model_b] = rb + k * ((1.0 - c.score_a) - (1.0 - expected_a))
    return rating


def _fit_strengths(i: np.ndarray, j: np.ndarray, s: np.ndarray, n_models: int) -> np.ndarray:
    """Maximum-likelihood θ (Σθ = 0) for outcomes s ∈ [0, 1] of model i against model j."""
    theta = np.zeros(n_models)
    ones = np.ones((n_models, n_models)) / n_models
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(theta[i] - theta[j])))  # P(i beats j)
        resid = s - p
        grad = np.bincount(i, resid, n_models) - np.bincount(j, resid, n_models)
        w = p * (1.0 - p)
        hess = np.zeros((n_models, n_models))
        np.add.at(hess, (i, i), w)
        np.add.at(hess, (j, j), w)
        np.add.at(hess, (i, j), -w)
        np.add.at(hess, (j, i), -w)
        # The likelihood is flat along θ + c·1; adding 11ᵀ/n makes the Newton system regular on Σθ = 0.
        try:
            step = np.linalg.solve(hess + ones, grad)
        except np.linalg.LinAlgError:
            break
        theta += step
        theta -= theta.mean()
        if not np.isfinite(theta).all() or np.abs(theta).max() > 30:
            break  # a strength of e^30 : 1 odds means the maximum lies at infinity
        if np.abs(step).max() < 1e-12:
            return theta
    raise DanluError(
        "comparisons: the Bradley-Terry strengths do not converge because some model never lost (or never "
        "won) against the rest; add comparisons that connect every model both ways"
    )


def _outcomes(
    comparisons: Sequence[Comparison],
) -> tuple[list[str], dict[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(model names, name -> index, (i, j, s)): comparison k is model i[k] against j[k], scoring s[k] for i."""
    names = _names(comparisons)
    index = {n: k for k, n in enumerate(names)}
    i = np.array([index[c.model_a] for c in comparisons])
    j = np.array([index[c.model_b] for c in comparisons])
    s = np.array([c.score_a for c in comparisons], dtype=np.float64)
    return names, index, (i, j, s)


def bradley_terry(comparisons: Sequence[Comparison]) -> dict[str, float]:
    """Bradley–Terry strengths θ (natural log-odds, mean 0) by maximum likelihood."""
    names, index, (i, j, s) = _outcomes(comparisons)
    theta = _fit_strengths(i, j, s, len(names))
    return {n: float(theta[index[n]]) for n in names}


def _to_elo_scale(theta: float) -> float:
    return ELO_INIT + ELO_SCALE * theta / math.log(ELO_BASE)


@dataclass(frozen=True)
class Leaderboard:
    """Models sorted by Bradley–Terry rating (Elo scale) with bootstrap intervals, win rates and online Elo."""

    models: tuple[str, ...]
    rating: dict[str, float]
    lower: dict[str, float]
    upper: dict[str, float]
    win_rate: dict[str, float]
    online_elo: dict[str, float]
    confidence: float


def leaderboard(
    comparisons: Sequence[Comparison], n_bootstrap: int = 200, confidence: float = 0.95, seed: int = 0
) -> Leaderboard:
    """The whole table: BT ratings with `confidence` intervals from `n_bootstrap` resamples."""
    if not 0 < confidence < 1:
        raise DanluError(f"confidence: must be in (0, 1), got {confidence}")
    if n_bootstrap < 1:
        raise DanluError(f"n_bootstrap: must be at least 1, got {n_bootstrap}")
    names, index, (i, j, s) = _outcomes(comparisons)
    theta = _fit_strengths(i, j, s, len(names))
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_bootstrap):
        pick = rng.integers(0, len(comparisons), len(comparisons))
        try:
            samples.append(_fit_strengths(i[pick], j[pick], s[pick], len(names)))
        except DanluError:  # a resample where one model happens never to lose: skip it, as it has no MLE
            continue
    if not samples:
        raise DanluError("comparisons: no bootstrap resample had a finite Bradley-Terry fit; add comparisons")
    boot = np.stack(samples)  # (n_ok, n_models)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boot, alpha, axis=0), np.quantile(boot, 1 - alpha, axis=0)
    rating = {n: _to_elo_scale(float(theta[index[n]])) for n in names}
    order = tuple(sorted(names, key=lambda n: -rating[n]))
    return Leaderboard(
        models=order,
        rating=rating,
        lower={n: _to_elo_scale(float(lo[index[n]])) for n in names},
        upper={n: _to_elo_scale(float(hi[index[n]])) for n in names},
        win_rate=win_rates(comparisons),
        online_elo=online_elo(comparisons),
        confidence=confidence,
    )


def plot_leaderboard(board: Leaderboard, path: str | Path, title: str = "Bradley-Terry rating") -> Path:
    """Horizontal bars: each model's rating with its bootstrap interval, best at the top."""
    from danlu.plots import new_figure, save_figure

    models = list(reversed(board.models))
    fig = new_figure(6.4, 0.5 * len(models) + 1.5)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(models))
    rating = np.array([board.rating[m] for m in models])
    err = np.array(
        [
            [board.rating[m] - board.lower[m] for m in models],
            [board.upper[m] - board.rating[m] for m in models],
        ]
    )
    ax.errorbar(rating, y, xerr=err, fmt="o", capsize=4)
    ax.set_yticks(y, models)
    ax.set_xlabel(f"rating (Elo scale, {board.confidence:.0%} bootstrap interval)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
