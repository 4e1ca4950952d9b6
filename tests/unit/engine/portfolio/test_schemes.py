"""The simple schemes against small cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

import strategies.weighting
from engine.portfolio import (
    expected_returns,
    inverse_volatility_weights,
    schemes,
    score_proportional_weights,
)

NAN = float("nan")


def test_the_old_import_path_still_gives_the_same_functions():
    assert strategies.weighting.top_fraction_weights is schemes.top_fraction_weights
    assert strategies.weighting.top_fraction_count is schemes.top_fraction_count


# -- score-proportional ---------------------------------------------------------------------------
def test_score_proportional_weights_by_rank_among_the_selected():
    # 5 scored assets, fraction 0.8: the top 4 are assets 5, 2, 3, 1 (ranks 4, 3, 2, 1 of 10).
    scores = np.array([NAN, 1.0, 3.0, 2.0, 0.5, 5.0])
    weights = score_proportional_weights(scores, fraction=0.8, gross=1.0, cap=1.0)
    np.testing.assert_allclose(weights, [0.0, 0.1, 0.3, 0.2, 0.0, 0.4], rtol=1e-12)


def test_the_cap_excess_goes_to_the_uncapped_names_in_proportion():
    scores = np.array([NAN, 1.0, 3.0, 2.0, 0.5, 5.0])
    weights = score_proportional_weights(scores, fraction=0.8, gross=1.0, cap=0.35)
    # 0.4 is capped to 0.35; the other 0.65 is shared 1 : 2 : 3.
    expected = [0.0, 0.65 / 6, 3 * 0.65 / 6, 2 * 0.65 / 6, 0.0, 0.35]
    np.testing.assert_allclose(weights, expected, rtol=1e-12)
    assert weights.sum() == pytest.approx(1.0)


def test_redistribution_repeats_until_nothing_is_over_the_cap():
    # Ranks 1..4 with gross 1 and cap 0.3: 0.4 capped, then 0.3 * 7/6 = 0.35 capped, then the
    # last two share 0.4 as 1 : 2.
    weights = score_proportional_weights(np.array([1.0, 2.0, 3.0, 4.0]), 1.0, 1.0, 0.3)
    np.testing.assert_allclose(weights, [0.4 / 3, 0.8 / 3, 0.3, 0.3], rtol=1e-12)


def test_when_every_name_is_capped_the_rest_is_cash():
    weights = score_proportional_weights(np.array([1.0, 2.0, NAN]), 1.0, 1.0, 0.3)
    np.testing.assert_allclose(weights, [0.3, 0.3, 0.0])


def test_tied_scores_share_their_average_rank():
    weights = score_proportional_weights(np.array([2.0, 1.0, 2.0, 0.0]), 0.75, 1.0, 1.0)
    # Selected: 2, 2, 1 -> ranks 2.5, 2.5, 1 (sum 6).
    np.testing.assert_allclose(weights, [2.5 / 6, 1 / 6, 2.5 / 6, 0.0], rtol=1e-12)


def test_nothing_selected_or_nothing_scored_is_all_cash():
    assert not score_proportional_weights(np.array([1.0, 2.0, 3.0]), 0.2, 1.0, 0.5).any()
    assert not score_proportional_weights(np.full(4, NAN), 1.0, 1.0, 0.5).any()


# -- inverse volatility ---------------------------------------------------------------------------
def test_inverse_volatility_weights_skip_unusable_volatility():
    scores = np.array([3.0, 2.0, 1.0, NAN, 4.0, 0.5])
    volatility = np.array([0.02, 0.01, NAN, 0.01, 0.0, 0.04])
    # Eligible: assets 0, 1, 5 (2: NaN vol, 3: no score, 4: zero vol). Fraction 2/3 -> 0 and 1.
    weights = inverse_volatility_weights(scores, volatility, fraction=2 / 3, gross=0.9, cap=1.0)
    np.testing.assert_allclose(weights, [0.3, 0.6, 0.0, 0.0, 0.0, 0.0], rtol=1e-12)


def test_inverse_volatility_weights_are_capped():
    scores = np.array([3.0, 2.0, 1.0])
    volatility = np.array([0.01, 0.02, 0.04])
    weights = inverse_volatility_weights(scores, volatility, fraction=1.0, gross=1.0, cap=0.5)
    # 1/vol = 100, 50, 25: 4/7 capped at 0.5; 0.5 left shared 2 : 1.
    np.testing.assert_allclose(weights, [0.5, 1 / 3, 1 / 6], rtol=1e-12)


def test_schemes_refuse_bad_arguments():
    with pytest.raises(ValueError, match="cap must be > 0, received 0"):
        score_proportional_weights(np.ones(3), 0.5, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\], received 1.5"):
        inverse_volatility_weights(np.ones(3), np.ones(3), 1.5, 1.0, 0.5)
    with pytest.raises(ValueError, match="volatility must have the scores' shape"):
        inverse_volatility_weights(np.ones(3), np.ones(2), 0.5, 1.0, 0.5)


# -- expected returns -----------------------------------------------------------------------------
def test_expected_returns_follow_grinolds_rule():
    scores = np.array([1.0, 2.0, 3.0, NAN])
    volatility = np.array([0.01, 0.02, 0.03, 0.04])
    z = math.sqrt(1.5)  # population std of 1, 2, 3 is sqrt(2/3): z-scores -sqrt(1.5), 0, sqrt(1.5)
    alpha = expected_returns(scores, volatility, ic=0.1)
    np.testing.assert_allclose(alpha[:3], [-0.1 * 0.01 * z, 0.0, 0.1 * 0.03 * z], rtol=1e-12)
    assert math.isnan(alpha[3])


def test_expected_returns_are_nan_without_volatility_and_zero_without_spread():
    alpha = expected_returns(np.array([1.0, 2.0]), np.array([NAN, 0.02]), ic=0.05)
    assert math.isnan(alpha[0]) and alpha[1] > 0
    np.testing.assert_array_equal(
        expected_returns(np.array([2.0, 2.0, NAN]), np.array([0.01, 0.02, 0.03]), 0.05),
        [0.0, 0.0, NAN],
    )
