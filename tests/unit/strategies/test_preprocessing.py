"""Cross-sectional preprocessing against straightforward computations, and its invariants:
winsorised values inside the bounds, z-scores with mean 0 and std 1, residuals orthogonal to
the regressors, NaN left NaN."""

from __future__ import annotations

import math
import statistics
import warnings

import numpy as np
import pytest

from strategies.preprocessing import (
    MAD_TO_STD,
    neutralize,
    preprocess,
    winsorize_mad,
    winsorize_quantile,
    zscore,
)


def cross_sections(n_rows: int = 8, n_assets: int = 40, seed: int = 9) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_t(2.0, (n_rows, n_assets))  # fat tails: there is something to clip
    x[:, :3] *= 50.0
    x[1, 5] = x[3, 7] = x[3, 8] = np.nan
    return x


def valid(row: np.ndarray) -> list[float]:
    return [float(v) for v in row if not math.isnan(v)]


def awkward_cross_sections(seed: int, n_rows: int, n_assets: int) -> np.ndarray:
    """Fat tails, ties, NaN, and (room permitting) an all-NaN, a one-value and a constant row."""
    rng = np.random.default_rng(seed)
    x = rng.standard_t(2.0, (n_rows, n_assets)) * 10.0 ** rng.integers(-6, 6, (n_rows, 1))
    x[:, ::4] = np.round(x[:, ::4])
    x[rng.random(x.shape) < rng.choice([0.0, 0.1, 0.6], (n_rows, 1))] = np.nan
    if n_rows >= 4:
        x[1] = np.nan
        x[2] = np.nan
        x[2, -1] = 3.0
        x[3] = 0.1
        x[3, 0] = np.nan
    return x


def row_by_row(function, x: np.ndarray) -> np.ndarray:
    """Apply ``function`` to each row's valid entries and put its results back in place."""
    out = np.full(x.shape, np.nan)
    for row_in, row_out in zip(np.atleast_2d(x), np.atleast_2d(out)):
        present = ~np.isnan(row_in)
        if present.any():
            row_out[present] = function(row_in[present])
    return out.reshape(x.shape)


def quiet(function, *args, **kwargs):
    """Call with every warning an error: all-NaN and constant rows must give answers quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return function(*args, **kwargs)


AWKWARD_SHAPES = [(1, 19), (2, 19), (6, 19), (18, 500), (5, 700), (4, 1), (4, 2)]


def test_winsorize_mad_clips_to_median_plus_minus_k_robust_deviations_row_by_row():
    x = cross_sections()
    out = winsorize_mad(x, k=3.0)
    for row_in, row_out in zip(x, out):
        values = valid(row_in)
        median = statistics.median(values)
        mad = statistics.median(abs(v - median) for v in values)
        low, high = median - 3.0 * MAD_TO_STD * mad, median + 3.0 * MAD_TO_STD * mad
        expected = [math.nan if math.isnan(v) else min(max(v, low), high) for v in row_in]
        np.testing.assert_allclose(row_out, expected, rtol=1e-12)
        assert all(low - 1e-12 <= v <= high + 1e-12 for v in valid(row_out))
        assert (row_out != row_in).sum() > np.isnan(row_in).sum()  # something was clipped
    np.testing.assert_array_equal(winsorize_mad(x[3], k=3.0), out[3])  # 1-D is one row


def test_winsorize_mad_leaves_a_cross_section_with_zero_mad_and_all_nan_rows_alone():
    row = np.array([1.0, 1.0, 1.0, 1.0, 50.0, np.nan])
    np.testing.assert_array_equal(winsorize_mad(row), row)
    np.testing.assert_array_equal(winsorize_mad(np.full(4, np.nan)), np.full(4, np.nan))
    with pytest.raises(ValueError, match="winsorize_mad: k must be positive, received 0"):
        winsorize_mad(row, k=0)


@pytest.mark.parametrize("shape", AWKWARD_SHAPES)
@pytest.mark.parametrize("k", [0.5, 3.0])
def test_winsorize_mad_matches_numpy_medians_row_by_row(shape, k):
    x = awkward_cross_sections(sum(shape), *shape)

    def clip(values):
        median = np.median(values)
        mad = np.median(np.abs(values - median))
        if mad == 0:
            return values
        return np.clip(values, median - k * MAD_TO_STD * mad, median + k * MAD_TO_STD * mad)

    np.testing.assert_array_equal(quiet(winsorize_mad, x, k), row_by_row(clip, x))
    np.testing.assert_array_equal(quiet(winsorize_mad, x[0], k), row_by_row(clip, x[0]))


@pytest.mark.parametrize("shape", AWKWARD_SHAPES)
@pytest.mark.parametrize(("lower", "upper"), [(0.01, 0.99), (0.0, 1.0), (0.25, 0.5)])
def test_winsorize_quantile_matches_numpy_quantiles_row_by_row(shape, lower, upper):
    x = awkward_cross_sections(sum(shape) + 1, *shape)

    def clip(values):
        low, high = np.quantile(values, [lower, upper])
        return np.clip(values, low, high)

    np.testing.assert_array_equal(quiet(winsorize_quantile, x, lower, upper), row_by_row(clip, x))
    np.testing.assert_array_equal(
        quiet(winsorize_quantile, x[0], lower, upper), row_by_row(clip, x[0])
    )


def test_winsorize_quantile_clips_to_the_row_quantiles():
    x = cross_sections()
    out = winsorize_quantile(x, lower=0.05, upper=0.9)
    for row_in, row_out in zip(x, out):
        values = valid(row_in)
        # statistics.quantiles(method="inclusive") is numpy's linear interpolation.
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        low, high = cuts[4], cuts[89]
        expected = [math.nan if math.isnan(v) else min(max(v, low), high) for v in row_in]
        np.testing.assert_allclose(row_out, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="lower=0.9, upper=0.1"):
        winsorize_quantile(x, lower=0.9, upper=0.1)


def test_zscore_has_mean_zero_and_std_one_on_the_valid_entries():
    x = cross_sections()
    out = zscore(x)
    for row_in, row_out in zip(x, out):
        values = valid(row_in)
        mean, std = statistics.fmean(values), statistics.pstdev(values)
        expected = [math.nan if math.isnan(v) else (v - mean) / std for v in row_in]
        np.testing.assert_allclose(row_out, expected, rtol=1e-10, atol=1e-12)
        assert statistics.fmean(valid(row_out)) == pytest.approx(0.0, abs=1e-12)
        assert statistics.pstdev(valid(row_out)) == pytest.approx(1.0, rel=1e-12)


def test_zscore_of_a_constant_cross_section_is_zero_and_nan_stays_nan():
    np.testing.assert_array_equal(zscore(np.array([0.1, 0.1, np.nan, 0.1])), [0, 0, np.nan, 0])
    np.testing.assert_array_equal(zscore(np.array([np.nan, np.nan])), [np.nan, np.nan])


@pytest.mark.parametrize("shape", AWKWARD_SHAPES)
def test_zscore_matches_mean_and_std_of_the_valid_entries_row_by_row(shape):
    x = awkward_cross_sections(sum(shape) + 2, *shape)

    def standardise(values):
        if (values == values[0]).all():
            return np.zeros_like(values)
        return (values - np.mean(values)) / np.std(values)

    expected = row_by_row(standardise, x)
    out = quiet(zscore, x)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(quiet(zscore, x[0]), out[0])  # 1-D is one row


def test_zscore_is_numpys_nanmean_and_nanstd_to_the_bit():
    x = awkward_cross_sections(3, 40, 19)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's all-NaN warnings
        expected = (x - np.nanmean(x, axis=1, keepdims=True)) / np.nanstd(x, axis=1, keepdims=True)
    varied = np.nanmax(np.where(np.isnan(x), -np.inf, x), axis=1) > np.nanmin(
        np.where(np.isnan(x), np.inf, x), axis=1
    )
    assert varied.sum() > 30
    np.testing.assert_array_equal(zscore(x)[varied], expected[varied])


def test_zscore_of_all_nan_and_constant_rows_is_quiet():
    x = np.array([[np.nan, np.nan, np.nan], [2.0, np.nan, 2.0], [np.nan, 5.0, np.nan]])
    np.testing.assert_array_equal(
        quiet(zscore, x), [[np.nan] * 3, [0.0, np.nan, 0.0], [np.nan, 0.0, np.nan]]
    )
    assert np.isnan(quiet(zscore, np.full(4, np.nan))).all()


def test_neutralize_matches_the_normal_equations_and_is_orthogonal_to_the_regressors():
    rng = np.random.default_rng(4)
    against = rng.normal(size=(2, 50))
    x = 0.7 * against[0] - 1.3 * against[1] + 2.0 + rng.normal(size=50)
    x[3] = np.nan
    against[1, 10] = np.nan
    residual = neutralize(x, against)
    used = ~np.isnan(x) & ~np.isnan(against).any(axis=0)
    np.testing.assert_array_equal(np.isnan(residual), ~used)
    design = np.column_stack([np.ones(used.sum()), against[:, used].T])
    coefficients = np.linalg.solve(design.T @ design, design.T @ x[used])
    np.testing.assert_allclose(residual[used], x[used] - design @ coefficients, atol=1e-10)
    for regressor in design.T:  # the constant and each factor
        assert abs(float(regressor @ residual[used])) < 1e-9


def test_neutralize_against_one_factor_is_the_simple_regression_residual():
    rng = np.random.default_rng(5)
    z = rng.normal(size=30)
    x = 3 * z + rng.normal(size=30)
    slope = statistics.covariance(list(z), list(x)) / statistics.variance(list(z))
    intercept = statistics.fmean(x) - slope * statistics.fmean(z)
    np.testing.assert_allclose(neutralize(x, z), x - intercept - slope * z, atol=1e-12)


def test_neutralize_with_too_few_assets_gives_nan():
    assert np.isnan(
        neutralize(np.array([1.0, 2.0, 3.0]), np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]]))
    ).all()
    with pytest.raises(ValueError, match=r"neutralize: x must be \(N,\) and against \(K, N\)"):
        neutralize(np.ones(3), np.ones((2, 4)))


@pytest.mark.parametrize("method", ["mad", "quantile", None])
def test_preprocess_winsorises_then_zscores_each_factor(method):
    exposures = cross_sections(n_rows=4)
    out = preprocess(exposures, winsorize=method)
    if method == "mad":
        expected = zscore(winsorize_mad(exposures))
    elif method == "quantile":
        expected = zscore(winsorize_quantile(exposures))
    else:
        expected = zscore(exposures)
    np.testing.assert_array_equal(out, expected)


def test_preprocess_neutralises_the_other_factors_against_the_chosen_ones():
    rng = np.random.default_rng(6)
    size = rng.normal(size=60)
    exposures = np.vstack([size + rng.normal(size=60), size, rng.normal(size=60) - 2 * size])
    exposures[0, 4] = np.nan
    out = preprocess(exposures, winsorize=None, neutralize_against=[1])
    np.testing.assert_array_equal(out[1], zscore(exposures[1]))
    for row in (0, 2):
        values = out[row][~np.isnan(out[row])]
        regressor = out[1][~np.isnan(out[row])]
        assert abs(values.mean()) < 1e-12 and values.std() == pytest.approx(1.0)
        assert abs(float(values @ regressor)) < 1e-9
    assert np.isnan(out[0, 4])


def test_preprocess_refuses_bad_arguments():
    with pytest.raises(ValueError, match="winsorize must be 'mad', 'quantile' or None"):
        preprocess(np.ones((2, 3)), winsorize="clip")
    with pytest.raises(ValueError, match="neutralize_against index 5 is out of range for 2"):
        preprocess(np.ones((2, 3)), neutralize_against=[5])
    with pytest.raises(ValueError, match=r"exposures must be \(factors, assets\)"):
        preprocess(np.ones(3))
