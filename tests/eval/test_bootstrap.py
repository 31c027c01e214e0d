"""danlu.eval.bootstrap: the percentile interval against scipy's own bootstrap and the normal approximation."""

import numpy as np
import pytest
from scipy import stats

from danlu.errors import DanluError
from danlu.eval.bootstrap import bootstrap_ci, format_ci


def test_matches_scipy_percentile_bootstrap():
    scores = np.random.default_rng(1).random(300) < 0.4  # 300 right/wrong items at accuracy ~0.4
    mean, low, high = bootstrap_ci(scores, n_resamples=20_000, seed=0)
    ref = stats.bootstrap(
        (scores.astype(float),), np.mean, n_resamples=20_000, method="percentile", random_state=0
    )
    assert mean == pytest.approx(scores.mean())
    # two independent Monte Carlo estimates of the same quantiles: equal to well under the interval's width
    assert low == pytest.approx(ref.confidence_interval.low, abs=0.006)
    assert high == pytest.approx(ref.confidence_interval.high, abs=0.006)


def test_bernoulli_interval_is_the_wald_interval_for_large_n():
    scores = [1] * 500 + [0] * 500  # p = 0.5, n = 1000: 1.96·√(p(1−p)/n) = 0.0310
    mean, low, high = bootstrap_ci(scores, seed=3)
    half = 1.959964 * (0.25 / 1000) ** 0.5
    assert (
        mean == 0.5
        and low == pytest.approx(0.5 - half, abs=0.004)
        and high == pytest.approx(0.5 + half, abs=0.004)
    )
    assert format_ci(mean, low, high) == f"0.50 [{low:.2f}, {high:.2f}]"


def test_all_wrong_gives_the_zero_width_interval_and_is_seeded():
    assert bootstrap_ci([0] * 200) == (0.0, 0.0, 0.0)
    assert bootstrap_ci([0, 1, 1, 0, 1], seed=7) == bootstrap_ci([0, 1, 1, 0, 1], seed=7)


@pytest.mark.parametrize(
    "scores, kwargs, match",
    [([], {}, "non-empty"), ([0.5, float("nan")], {}, "NaN"), ([1, 0], {"confidence": 1.0}, "confidence"),
     ([1, 0], {"n_resamples": 10**9}, "n_resamples")],
)  # fmt: skip
def test_bad_input_is_a_clear_error(scores, kwargs, match):
    with pytest.raises(DanluError, match=match):
        bootstrap_ci(scores, **kwargs)
