"""Scores standardise factors across assets; weights go equally to the best fraction of them."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.weighting import equal_factor_scores, top_fraction_weights, zscore

NAN = float("nan")


def zscore_by_hand(values: list[float]) -> list[float]:
    present = [v for v in values if not math.isnan(v)]
    mean = statistics.fmean(present)
    std = statistics.pstdev(present)
    return [NAN if math.isnan(v) else (v - mean) / std for v in values]


# -- zscore --------------------------------------------------------------------------------------
def test_zscore_matches_the_population_formula():
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    np.testing.assert_allclose(zscore(np.array(values)), zscore_by_hand(values), rtol=1e-12)


def test_zscore_ignores_nan_and_keeps_it_in_place():
    values = [2.0, NAN, 4.0, 9.0, NAN]
    result = zscore(np.array(values))
    np.testing.assert_allclose(result, zscore_by_hand(values), rtol=1e-12)
    assert np.isnan(result[[1, 4]]).all()
    assert np.nanmean(result) == pytest.approx(0.0, abs=1e-12)


def test_zscore_of_a_constant_column_is_zero():
    np.testing.assert_array_equal(zscore(np.array([7.0, 7.0, NAN, 7.0])), [0.0, 0.0, NAN, 0.0])


def test_zscore_of_a_single_value_is_zero_and_all_nan_stays_nan():
    np.testing.assert_array_equal(zscore(np.array([NAN, 3.0])), [NAN, 0.0])
    assert np.isnan(zscore(np.array([NAN, NAN]))).all()


def test_zscore_of_integers_returns_floats():
    result = zscore(np.array([1, 2, 3]))
    assert result.dtype == float
    np.testing.assert_allclose(result, zscore_by_hand([1.0, 2.0, 3.0]))


# -- equal_factor_scores -------------------------------------------------------------------------
def test_scores_are_the_mean_of_z_scored_factors_by_default():
    exposures = np.array([[0.1, 0.3, -0.2, 0.0], [5.0, 1.0, 2.0, 4.0]])
    expected = [
        (a + b) / 2
        for a, b in zip(zscore_by_hand(list(exposures[0])), zscore_by_hand(list(exposures[1])))
    ]
    np.testing.assert_allclose(equal_factor_scores(exposures), expected, rtol=1e-12)


def test_scores_apply_the_given_factor_weights():
    exposures = np.array([[0.1, 0.3, -0.2, 0.0], [5.0, 1.0, 2.0, 4.0], [1.0, 1.5, 1.2, 0.7]])
    weights = [0.5, -0.2, 0.7]
    z = [zscore_by_hand(list(row)) for row in exposures]
    expected = [sum(w * z[j][i] for j, w in enumerate(weights)) for i in range(4)]
    np.testing.assert_allclose(
        equal_factor_scores(exposures, np.array(weights)), expected, rtol=1e-12
    )


def test_an_asset_missing_any_factor_gets_a_nan_score():
    exposures = np.array([[0.1, NAN, -0.2, 0.0, 0.4], [5.0, 1.0, 2.0, NAN, 3.0]])
    scores = equal_factor_scores(exposures)
    assert np.isnan(scores[[1, 3]]).all()
    expected = [
        (a + b) / 2
        for a, b in zip(zscore_by_hand(list(exposures[0])), zscore_by_hand(list(exposures[1])))
    ]
    np.testing.assert_allclose(scores[[0, 2, 4]], np.array(expected)[[0, 2, 4]], rtol=1e-12)


def test_an_asset_missing_a_zero_weight_factor_still_gets_a_nan_score():
    exposures = np.array([[0.1, 0.2, 0.3], [1.0, NAN, 2.0]])
    assert np.isnan(equal_factor_scores(exposures, np.array([1.0, 0.0]))[1])


# -- top_fraction_weights ------------------------------------------------------------------------
def test_top_fraction_holds_the_best_assets_equally():
    scores = np.array([0.5, 2.0, -1.0, 1.5, 0.0, 3.0, 1.0, -0.5])
    weights = top_fraction_weights(scores, 0.25)  # floor(0.25 * 8) = 2 assets
    np.testing.assert_array_equal(weights, [0, 0.5, 0, 0, 0, 0.5, 0, 0])


def test_count_is_rounded_down_over_assets_with_a_score_only():
    scores = np.array([NAN, 1.0, 4.0, NAN, 3.0, 2.0, NAN])
    weights = top_fraction_weights(scores, 0.6, gross=0.9)  # floor(0.6 * 4) = 2 assets
    np.testing.assert_allclose(weights, [0, 0, 0.45, 0, 0.45, 0, 0])


def test_fraction_of_a_third_of_three_assets_holds_one():
    # 3 * (1/3) is 0.999... in floating point; it still means one asset.
    np.testing.assert_array_equal(
        top_fraction_weights(np.array([1.0, 3.0, 2.0]), 1 / 3), [0, 1.0, 0]
    )


def test_ties_are_broken_by_position():
    scores = np.array([1.0, 2.0, 2.0, 2.0, 0.0])
    np.testing.assert_array_equal(top_fraction_weights(scores, 0.4), [0, 0.5, 0.5, 0, 0])


@pytest.mark.parametrize("scores", [np.array([1.0, 2.0, 3.0]), np.array([NAN, NAN]), np.array([])])
def test_too_small_a_universe_holds_cash(scores):
    weights = top_fraction_weights(scores, 0.2)
    assert weights.shape == scores.shape and not weights.any()


@given(
    st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(NAN)), min_size=0, max_size=40),
    st.floats(0.0, 1.0),
    st.floats(0.1, 2.0),
)
def test_weights_are_long_only_equal_and_sum_to_gross_or_zero(scores, fraction, gross):
    array = np.array(scores, dtype=float)
    weights = top_fraction_weights(array, fraction, gross)
    n_valid = int((~np.isnan(array)).sum())
    count = math.floor(fraction * n_valid + 1e-9)
    held = np.flatnonzero(weights)
    assert len(held) == count
    assert (weights >= 0).all()
    if count:
        assert weights.sum() == pytest.approx(gross)
        np.testing.assert_allclose(weights[held], gross / count)
        # Every held asset scores at least as high as every scored asset left out.
        left_out = np.setdiff1d(np.flatnonzero(~np.isnan(array)), held)
        assert not np.isnan(array[held]).any()
        if len(left_out):
            assert array[held].min() >= array[left_out].max()
