"""The Ledoit-Wolf risk model is scikit-learn's estimate, kept as loadings plus a ridge."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from engine.portfolio import RiskModel, ledoit_wolf_model


def correlated_returns(n_periods: int, n_assets: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    market = rng.normal(0.0, 1.0, (n_periods, 1))
    return 0.001 + 0.6 * market + rng.normal(0.0, 1.0, (n_periods, n_assets))


@pytest.mark.parametrize(("n_periods", "n_assets"), [(120, 20), (30, 50), (200, 1), (2, 3)])
def test_covariance_is_sklearns_ledoit_wolf(n_periods, n_assets):
    returns = correlated_returns(n_periods, n_assets)
    model = ledoit_wolf_model(returns)
    expected = LedoitWolf().fit(returns).covariance_
    np.testing.assert_allclose(model.covariance(), expected, rtol=1e-12, atol=1e-12)
    assert model.loadings.shape == (n_periods, n_assets)
    np.testing.assert_allclose(model.mean, returns.mean(axis=0), rtol=1e-12)


def test_the_shrinkage_is_real_not_zero():
    # Fewer periods than assets: Ledoit-Wolf must pull the sample covariance towards mu * I.
    model = ledoit_wolf_model(correlated_returns(30, 50))
    assert np.all(model.specific > 0)


def test_portfolio_variance_and_volatility_agree_with_the_matrix():
    model = ledoit_wolf_model(correlated_returns(60, 15, seed=3))
    weights = np.random.default_rng(4).normal(size=15)
    covariance = model.covariance()
    assert model.portfolio_variance(weights) == pytest.approx(
        weights @ covariance @ weights, rel=1e-12
    )
    np.testing.assert_allclose(model.volatility(), np.sqrt(np.diag(covariance)), rtol=1e-12)


def test_missing_returns_are_the_assets_mean_before_shrinkage():
    returns = correlated_returns(80, 6, seed=5)
    returns[:20, 2] = np.nan  # listed late
    returns[[5, 40, 41], 4] = np.nan  # three missing bars
    model = ledoit_wolf_model(returns)

    mean = np.nanmean(returns, axis=0)
    filled = np.where(np.isnan(returns), mean, returns)
    np.testing.assert_allclose(model.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(model.returns, filled, rtol=1e-12)
    expected = LedoitWolf().fit(filled).covariance_
    np.testing.assert_allclose(model.covariance(), expected, rtol=1e-12, atol=1e-12)
    assert np.isfinite(model.loadings).all()


def test_an_asset_with_no_returns_gets_zero_loadings_and_zero_mean():
    returns = correlated_returns(50, 4, seed=6)
    returns[:, 1] = np.nan
    model = ledoit_wolf_model(returns)
    assert not model.loadings[:, 1].any()
    assert model.mean[1] == 0.0
    assert np.isfinite(model.covariance()).all()


@pytest.mark.parametrize(
    "returns",
    [np.array([[0.01, -0.02, 0.03]]), np.full((10, 3), np.nan)],
    ids=["single row", "all NaN"],
)
def test_no_estimable_variance_gives_zero_loadings_not_a_crash(returns):
    model = ledoit_wolf_model(returns)
    assert isinstance(model, RiskModel)
    assert not model.loadings.any() and not model.specific.any()
    assert not model.covariance().any()


def test_no_rows_and_wrong_rank_are_refused():
    with pytest.raises(ValueError, match=r"no rows \(shape \(0, 3\)\)"):
        ledoit_wolf_model(np.empty((0, 3)))
    with pytest.raises(ValueError, match="must be 2-D"):
        ledoit_wolf_model(np.zeros(5))


def test_the_callers_array_is_not_modified():
    returns = correlated_returns(20, 3)
    returns[0, 0] = np.nan
    before = returns.copy()
    ledoit_wolf_model(returns)
    np.testing.assert_array_equal(returns, before)
