"""The PCA risk model is the K-component reconstruction of the Ledoit-Wolf covariance, and the
optimiser solves the problem its dense covariance states; each checked by an independent
computation (numpy's eigh of scikit-learn's estimate, cvxpy with the N x N matrix written out)."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from engine.portfolio import (
    OptimiserSettings,
    PortfolioOptimiser,
    RiskModel,
    ledoit_wolf_model,
    pca_model,
)
from engine.portfolio.covariance import SPECIFIC_FLOOR

TOLERANCE = 1e-7  # slack on constraints: what a solver at 1e-8 precision may leave


def factor_returns(n_periods: int, n_assets: int, seed: int = 0) -> np.ndarray:
    """Per-period returns with a market, four sectors and noise (crypto-like scale)."""
    rng = np.random.default_rng(seed)
    market = rng.normal(0.0, 0.03, (n_periods, 1))
    sectors = rng.normal(0.0, 0.02, (n_periods, 4))
    beta = rng.uniform(0.5, 1.5, n_assets)
    member = rng.integers(0, 4, n_assets)
    noise = rng.normal(0.0, 0.04, (n_periods, n_assets))
    return 0.001 + market * beta + sectors[:, member] + noise


def reference_covariance(returns: np.ndarray, n_factors: int) -> np.ndarray:
    """The K leading eigenpairs of scikit-learn's Ledoit-Wolf covariance (numpy's eigh), plus
    the floored diagonal they leave, as a dense N x N matrix."""
    mean = np.nanmean(returns, axis=0)
    filled = np.where(np.isnan(returns), mean, returns)
    shrunk = LedoitWolf().fit(filled).covariance_
    eigenvalues, eigenvectors = np.linalg.eigh(shrunk)  # ascending
    leading = eigenvectors[:, ::-1][:, :n_factors]
    values = eigenvalues[::-1][:n_factors]
    factor_part = leading @ np.diag(values) @ leading.T
    floor = SPECIFIC_FLOOR * np.trace(shrunk) / len(shrunk)
    specific = np.maximum(np.diag(shrunk) - np.diag(factor_part), floor)
    return factor_part + np.diag(specific)


# -- the model ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n_periods", "n_assets", "n_factors"),
    [(120, 20, 5), (120, 60, 20), (30, 80, 10), (60, 200, 20)],
)
def test_covariance_is_the_leading_eigenpairs_of_ledoit_wolf_plus_the_residual_diagonal(
    n_periods, n_assets, n_factors
):
    returns = factor_returns(n_periods, n_assets)
    model = pca_model(returns, n_factors)
    expected = reference_covariance(returns, n_factors)
    assert model.loadings.shape == (n_factors, n_assets)
    assert model.specific.shape == (n_assets,)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(model.covariance(), expected, rtol=1e-9, atol=1e-12 * scale)


def test_each_asset_keeps_its_ledoit_wolf_variance_and_only_correlations_change():
    returns = factor_returns(120, 40, seed=1)
    pca = pca_model(returns, 5)
    ledoit_wolf = ledoit_wolf_model(returns)
    mean_variance = np.trace(ledoit_wolf.covariance()) / 40
    assert np.all(pca.specific > SPECIFIC_FLOOR * mean_variance)  # the floor does not bind here
    np.testing.assert_allclose(pca.volatility(), ledoit_wolf.volatility(), rtol=1e-10)
    assert not np.allclose(pca.covariance(), ledoit_wolf.covariance(), rtol=1e-3)


def test_portfolio_variance_and_volatility_agree_with_the_matrix():
    model = pca_model(factor_returns(90, 25, seed=2), 6)
    weights = np.random.default_rng(3).normal(size=25)
    covariance = model.covariance()
    assert model.portfolio_variance(weights) == pytest.approx(
        weights @ covariance @ weights, rel=1e-12
    )
    np.testing.assert_allclose(model.volatility(), np.sqrt(np.diag(covariance)), rtol=1e-12)


def test_all_components_kept_leave_only_the_floor_as_specific_variance():
    # T > N and K = N: the components explain every asset's variance, the floor is all that
    # is left, so Sigma is Ledoit-Wolf's plus the floor on the diagonal.
    returns = factor_returns(120, 6, seed=4)
    model = pca_model(returns, 6)
    ledoit_wolf = LedoitWolf().fit(returns).covariance_
    floor = SPECIFIC_FLOOR * np.trace(ledoit_wolf) / 6
    np.testing.assert_allclose(model.specific, floor, rtol=1e-9)
    np.testing.assert_allclose(model.covariance(), ledoit_wolf + floor * np.eye(6), rtol=1e-9)


def test_factor_rows_are_capped_by_the_periods_and_the_assets():
    assert pca_model(factor_returns(120, 8), 20).loadings.shape == (8, 8)
    # 15 centred periods span 14 directions: the 15th row is padding (zeros), and the
    # specific variances keep every asset's Ledoit-Wolf variance.
    returns = factor_returns(15, 40)
    model = pca_model(returns, 20)
    assert model.loadings.shape == (15, 40)
    assert not model.loadings[-1].any() and np.all(model.loadings[:-1].any(axis=1))
    np.testing.assert_allclose(model.volatility(), ledoit_wolf_model(returns).volatility())
    np.testing.assert_allclose(model.covariance(), reference_covariance(returns, 14), rtol=1e-9)


def test_missing_returns_are_the_assets_mean_as_in_ledoit_wolf():
    returns = factor_returns(80, 12, seed=5)
    returns[:20, 2] = np.nan  # listed late
    returns[[5, 40, 41], 4] = np.nan  # three missing bars
    model = pca_model(returns, 4)
    np.testing.assert_allclose(model.mean, np.nanmean(returns, axis=0), rtol=1e-12)
    np.testing.assert_allclose(model.covariance(), reference_covariance(returns, 4), rtol=1e-9)
    assert np.isfinite(model.loadings).all()


@pytest.mark.parametrize(
    "returns",
    [np.array([[0.01, -0.02, 0.03]]), np.full((10, 3), np.nan)],
    ids=["single row", "all NaN"],
)
def test_no_estimable_variance_gives_zero_loadings_not_a_crash(returns):
    model = pca_model(returns, 2)
    assert isinstance(model, RiskModel)
    assert not model.loadings.any() and not model.specific.any()


def test_bad_inputs_are_refused_with_what_was_received():
    with pytest.raises(ValueError, match="pca_model: n_factors must be >= 1, received 0"):
        pca_model(factor_returns(20, 3), 0)
    with pytest.raises(ValueError, match=r"pca_model: returns has no rows \(shape \(0, 3\)\)"):
        pca_model(np.empty((0, 3)), 2)
    with pytest.raises(ValueError, match="pca_model: returns must be 2-D"):
        pca_model(np.zeros(5), 2)


# -- the optimiser on it --------------------------------------------------------------------------
def dense_solve(alpha, covariance, previous, settings):
    """The optimiser's problem stated directly: the N x N covariance in a quad_form, |.| as
    norm1, no scaling, no factor variables; solved by Clarabel to tight tolerances."""
    n = len(alpha)
    investable = np.isfinite(alpha)
    upper = np.where(investable, settings.weight_cap, 0.0)
    lower = np.zeros(n) if settings.long_only else -upper
    w = cp.Variable(n)
    scale = 1e4  # per-period figures are ~1e-4: bring them to where the tolerances bite
    objective = cp.Maximize(
        scale
        * (
            np.where(investable, alpha, 0.0) @ w
            - 0.5 * settings.risk_aversion * cp.quad_form(w, cp.psd_wrap(covariance))
            - settings.turnover_cost * cp.norm1(w - previous)
        )
    )
    constraints = [w >= lower, w <= upper]
    if settings.turnover_cap is not None:
        constraints.append(cp.norm1(w - previous) <= settings.turnover_cap)
    if settings.long_only:
        constraints.append(cp.sum(w) <= settings.gross)
    else:
        constraints += [
            cp.norm1(w) <= settings.gross,
            cp.sum(w) >= settings.net_min,
            cp.sum(w) <= settings.net_max,
        ]
    problem = cp.Problem(objective, constraints)
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    assert problem.status == "optimal"
    return np.asarray(w.value)


def mean_variance_objective(w, alpha, covariance, previous, settings):
    alpha = np.where(np.isfinite(alpha), alpha, 0.0)
    return (
        alpha @ w
        - 0.5 * settings.risk_aversion * w @ covariance @ w
        - settings.turnover_cost * np.abs(w - previous).sum()
    )


@pytest.mark.parametrize(
    "settings",
    [
        OptimiserSettings(risk_aversion=2.0, turnover_cost=0.0004, weight_cap=0.1, gross=1.0),
        OptimiserSettings(
            risk_aversion=5.0, turnover_cost=0.001, weight_cap=0.15, turnover_cap=0.3
        ),
        OptimiserSettings(
            risk_aversion=3.0,
            turnover_cost=0.0005,
            weight_cap=0.1,
            gross=1.0,
            long_only=False,
            net_min=-0.1,
            net_max=0.1,
        ),
    ],
    ids=["long-only", "long-only turnover cap", "long-short net band"],
)
def test_weights_match_a_dense_solve_of_the_same_problem(settings):
    n = 40
    returns = factor_returns(120, n, seed=6)
    model = pca_model(returns, 5)
    rng = np.random.default_rng(7)
    alpha = rng.normal(0.0, 3e-3, n)
    alpha[[3, 17]] = np.nan
    previous = rng.dirichlet(np.ones(n)) * 0.8
    previous = np.minimum(previous, settings.weight_cap)
    if not settings.long_only:
        previous *= rng.choice([-1.0, 1.0], n)
    covariance = reference_covariance(returns, 5)  # not the model's own covariance()

    result = PortfolioOptimiser().solve(alpha, model, previous, settings)
    reference = dense_solve(alpha, covariance, previous, settings)

    assert result.status == "optimal"
    np.testing.assert_allclose(result.weights, reference, atol=2e-6)
    assert np.abs(result.weights - previous).sum() > 0.05  # it traded: the check means something
    if settings.turnover_cap is not None:
        assert np.abs(result.weights - previous).sum() <= settings.turnover_cap + TOLERANCE
    ours = mean_variance_objective(result.weights, alpha, covariance, previous, settings)
    theirs = mean_variance_objective(reference, alpha, covariance, previous, settings)
    assert ours >= theirs - 1e-9


def test_unconstrained_long_short_is_the_closed_form_with_the_pca_covariance():
    # No cost, bounds far away: w* = Sigma^-1 alpha / lambda, Sigma from numpy's eigh.
    n = 15
    returns = factor_returns(120, n, seed=8)
    model = pca_model(returns, 3)
    alpha = np.random.default_rng(9).normal(0.0, 1e-4, n)
    settings = OptimiserSettings(
        risk_aversion=4.0,
        turnover_cost=0.0,
        weight_cap=50.0,
        gross=400.0,
        long_only=False,
        net_min=-400.0,
        net_max=400.0,
    )
    result = PortfolioOptimiser().solve(alpha, model, np.zeros(n), settings)
    covariance = reference_covariance(returns, 3)
    expected = np.linalg.solve(covariance, alpha) / settings.risk_aversion
    assert np.abs(expected).max() < 0.5 * settings.weight_cap  # the bounds really are slack
    np.testing.assert_allclose(result.weights, expected, rtol=1e-5, atol=1e-6)


def test_the_problem_has_k_factor_rows_and_is_built_once():
    optimiser = PortfolioOptimiser()
    settings = OptimiserSettings(weight_cap=0.1)
    first = pca_model(factor_returns(120, 50, seed=10), 8)
    second = pca_model(factor_returns(120, 50, seed=11), 8)
    optimiser.solve(np.full(50, 1e-3), first, np.zeros(50), settings)
    problem = optimiser.problem(50, 8, True)
    optimiser.solve(np.full(50, 1e-3), second, np.zeros(50), settings)
    assert optimiser.problem(50, 8, True) is problem
    assert problem.is_dpp()
    assert len(optimiser._templates) == 1


def test_a_risk_model_whose_specific_variances_do_not_match_n_is_refused():
    model = pca_model(factor_returns(60, 10), 3)
    broken = RiskModel(model.loadings, model.specific[:-1], model.mean, model.returns)
    with pytest.raises(ValueError, match=r"risk.specific \(N,\) must agree on N"):
        PortfolioOptimiser().solve(np.zeros(10), broken, np.zeros(10), OptimiserSettings())
