"""The optimiser's weights are the optimum of the stated problem, checked by independent solves."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from engine.portfolio import (
    OptimisationError,
    OptimiserSettings,
    PortfolioOptimiser,
    RiskModel,
    ledoit_wolf_model,
)
from engine.portfolio import optimiser as optimiser_module

TOLERANCE = 1e-7  # slack on constraints: what a solver at 1e-8 precision may leave


def risk_model(n_assets: int, n_periods: int = 120, seed: int = 0) -> RiskModel:
    rng = np.random.default_rng(seed)
    market = rng.normal(0.0, 0.01, (n_periods, 1))
    returns = market + rng.normal(0.0, 0.015, (n_periods, n_assets))
    return ledoit_wolf_model(returns)


def per_period_alpha(n_assets: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1e-3, n_assets)


def objective(w, alpha, covariance, previous, settings):
    return (
        alpha @ w
        - 0.5 * settings.risk_aversion * w @ covariance @ w
        - settings.turnover_cost * np.abs(w - previous).sum()
    )


def slsqp(alpha, covariance, previous, settings):
    """The same problem by SciPy's SLSQP: a smooth form with w = previous + buys - sells (and,
    long-short, w = longs - shorts), so that every |.| is a sum of non-negative parts."""
    n = len(alpha)
    long_short = not settings.long_only
    # x = [buys, sells, longs, shorts] (the last two long-short only), all >= 0.
    size = 4 * n if long_short else 2 * n

    def weights(x):
        return previous + x[:n] - x[n : 2 * n]

    scale = 1e4  # the objective is ~1e-4 per period: bring it to where SLSQP's tolerances bite
    into_weights = np.zeros((n, size))  # dw / dx
    into_weights[:, :n] = np.eye(n)
    into_weights[:, n : 2 * n] = -np.eye(n)
    traded = np.zeros(size)
    traded[: 2 * n] = 1.0

    def negative(x):
        w = weights(x)
        value = alpha @ w - 0.5 * settings.risk_aversion * w @ covariance @ w
        return -scale * (value - settings.turnover_cost * traded @ x)

    def gradient(x):
        slope = alpha - settings.risk_aversion * covariance @ weights(x)
        return -scale * (slope @ into_weights - settings.turnover_cost * traded)

    cap = settings.weight_cap
    constraints = [
        {"type": "ineq", "fun": lambda x: cap - weights(x)},
        {"type": "ineq", "fun": lambda x: weights(x) + (0.0 if settings.long_only else cap)},
    ]
    if settings.turnover_cap is not None:
        constraints.append(
            {"type": "ineq", "fun": lambda x: settings.turnover_cap - x[: 2 * n].sum()}
        )
    if settings.long_only:
        constraints.append({"type": "ineq", "fun": lambda x: settings.gross - weights(x).sum()})
    else:
        constraints += [
            {"type": "eq", "fun": lambda x: weights(x) - (x[2 * n : 3 * n] - x[3 * n :])},
            {"type": "ineq", "fun": lambda x: settings.gross - x[2 * n :].sum()},
            {"type": "ineq", "fun": lambda x: weights(x).sum() - settings.net_min},
            {"type": "ineq", "fun": lambda x: settings.net_max - weights(x).sum()},
        ]
    # Start at w = previous, off the bounds of the non-negative parts (a start on them all is
    # degenerate, and SLSQP stalls there).
    start = np.full(size, 1e-3)
    if long_short:
        start[2 * n : 3 * n] += np.maximum(previous, 0)
        start[3 * n :] += np.maximum(-previous, 0)
    result = minimize(
        negative,
        start,
        jac=gradient,
        method="SLSQP",
        bounds=[(0.0, None)] * size,
        constraints=constraints,
        options={"ftol": 1e-12, "maxiter": 2000},
    )
    # Status 8 ("positive directional derivative for linesearch") is SLSQP stopping at a vertex
    # it cannot improve on to machine precision; the caller's comparison is the real check.
    assert result.success or result.status == 8, result.message
    for constraint in constraints:
        residual = constraint["fun"](result.x)
        assert np.all(residual >= -1e-9 if constraint["type"] == "ineq" else abs(residual) <= 1e-9)
    return weights(result.x)


def assert_feasible(weights, previous, settings, alpha):
    cap = settings.weight_cap
    assert np.all(np.abs(weights) <= cap + TOLERANCE)
    assert np.abs(weights).sum() <= settings.gross + TOLERANCE
    if settings.long_only:
        assert np.all(weights >= 0.0)
    else:
        assert settings.net_min - TOLERANCE <= weights.sum() <= settings.net_max + TOLERANCE
    if settings.turnover_cap is not None:
        assert np.abs(weights - previous).sum() <= settings.turnover_cap + TOLERANCE
    assert np.all(weights[np.isnan(alpha)] == 0.0)


# -- against independent solutions ----------------------------------------------------------------
def test_unconstrained_long_short_is_the_closed_form():
    # No cost, no turnover cap, bounds far away: w* = Sigma^-1 alpha / lambda.
    risk = risk_model(8)
    alpha = per_period_alpha(8) * 0.1
    settings = OptimiserSettings(
        risk_aversion=4.0,
        turnover_cost=0.0,
        weight_cap=50.0,
        gross=400.0,
        long_only=False,
        net_min=-400.0,
        net_max=400.0,
    )
    result = PortfolioOptimiser().solve(alpha, risk, np.zeros(8), settings)
    expected = np.linalg.solve(risk.covariance(), alpha) / settings.risk_aversion
    assert np.abs(expected).max() < 0.5 * settings.weight_cap  # the bounds really are slack
    np.testing.assert_allclose(result.weights, expected, rtol=1e-5, atol=1e-6)
    assert result.status == "optimal"


@pytest.mark.parametrize(
    "settings",
    [
        OptimiserSettings(risk_aversion=10.0, turnover_cost=0.001, weight_cap=0.3, gross=0.9),
        OptimiserSettings(
            risk_aversion=2.0, turnover_cost=0.0005, weight_cap=0.25, turnover_cap=0.4
        ),
        OptimiserSettings(
            risk_aversion=5.0,
            turnover_cost=0.001,
            weight_cap=0.3,
            gross=1.0,
            long_only=False,
            net_min=-0.1,
            net_max=0.1,
        ),
        OptimiserSettings(
            risk_aversion=1.0,
            turnover_cost=0.0002,
            weight_cap=0.2,
            long_only=False,
            turnover_cap=0.5,
        ),
    ],
    ids=["long-only", "long-only turnover cap", "long-short net band", "long-short turnover cap"],
)
def test_matches_an_independent_slsqp_solve(settings):
    n = 6
    risk = risk_model(n, n_periods=60, seed=2)
    alpha = per_period_alpha(n, seed=3) * 3
    previous = np.array([0.2, 0.0, 0.1, 0.15, 0.0, 0.05])
    if not settings.long_only:
        previous = previous * np.array([1, 1, -1, 1, 1, -1])
    result = PortfolioOptimiser().solve(alpha, risk, previous, settings)
    covariance = risk.covariance()
    reference = slsqp(alpha, covariance, previous, settings)

    assert_feasible(result.weights, previous, settings, alpha)
    np.testing.assert_allclose(result.weights, reference, atol=1e-5)
    # And it is at least as good as the reference (which it may beat by the reference's slack).
    ours = objective(result.weights, alpha, covariance, previous, settings)
    theirs = objective(reference, alpha, covariance, previous, settings)
    assert ours >= theirs - 1e-10


def test_without_risk_the_linear_programme_fills_the_best_alphas_to_the_cap():
    risk = risk_model(5)
    alpha = np.array([5.0, 4.0, 3.0, 2.0, -1.0]) * 1e-3
    settings = OptimiserSettings(risk_aversion=0.0, turnover_cost=0.0, weight_cap=0.3, gross=0.8)
    result = PortfolioOptimiser().solve(alpha, risk, np.zeros(5), settings)
    np.testing.assert_allclose(result.weights, [0.3, 0.3, 0.2, 0.0, 0.0], atol=1e-7)


# -- constraints and behaviour --------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("long_only", [True, False])
def test_every_constraint_holds(seed, long_only):
    n = 30
    risk = risk_model(n, seed=seed)
    rng = np.random.default_rng(100 + seed)
    alpha = rng.normal(0.0, 2e-3, n)
    alpha[rng.choice(n, 3, replace=False)] = np.nan
    previous = rng.dirichlet(np.ones(n)) * 0.9
    if not long_only:
        previous *= rng.choice([-1.0, 1.0], n)
    settings = OptimiserSettings(
        risk_aversion=3.0,
        turnover_cost=0.0005,
        turnover_cap=1.5,
        weight_cap=0.08,
        gross=0.95,
        long_only=long_only,
        net_min=-0.05,
        net_max=0.05,
    )
    result = PortfolioOptimiser().solve(alpha, risk, previous, settings)
    assert_feasible(result.weights, previous, settings, alpha)
    assert np.all((result.weights == 0.0) | (np.abs(result.weights) >= 1e-8))


def test_a_higher_turnover_cost_trades_less():
    n = 20
    risk = risk_model(n, seed=7)
    alpha = per_period_alpha(n, seed=8)
    previous = np.full(n, 1.0 / n)
    optimiser = PortfolioOptimiser()
    turnover = []
    for cost in (0.0, 0.0005, 0.002, 1.0):
        settings = OptimiserSettings(turnover_cost=cost, weight_cap=0.2)
        weights = optimiser.solve(alpha, risk, previous, settings).weights
        turnover.append(np.abs(weights - previous).sum())
    assert all(a >= b - 1e-7 for a, b in zip(turnover, turnover[1:]))
    assert turnover[0] > 0.1  # the comparison is not between zeros
    assert turnover[-1] == pytest.approx(0.0, abs=1e-7)  # prohibitive cost: stay put


def test_holdings_the_cost_keeps_come_back_bit_for_bit_whatever_the_last_bit_of_alpha():
    # A restarted factor service can differ from the run it replaces in the last bit of a score.
    # Assets whose optimal weight is their current one must come back exactly as held, so that
    # neither run sends a dust order the other does not.
    n = 20
    risk = risk_model(n, seed=11)
    alpha = per_period_alpha(n, seed=12)
    rng = np.random.default_rng(13)
    previous = rng.dirichlet(np.ones(n)) * 0.9
    previous = np.minimum(previous, 0.2)
    settings = OptimiserSettings(turnover_cost=0.002, weight_cap=0.2)
    optimiser = PortfolioOptimiser()
    first = optimiser.solve(alpha, risk, previous, settings).weights
    nudged = alpha * (1.0 + rng.choice([-1.0, 1.0], n) * 2.0**-52)
    second = optimiser.solve(nudged, risk, previous, settings).weights
    kept = first == previous
    assert kept.sum() >= 3, "the cost must keep some holdings for the check to mean anything"
    assert np.array_equal(second[kept], previous[kept])
    assert np.array_equal(first == 0.0, second == 0.0)


def test_a_holding_over_the_cap_is_cut_to_the_cap_not_kept():
    n = 10
    previous = np.full(n, 0.05)
    previous[3] = 0.2 + 5e-7  # drifted just over the cap: within the noise snap, but not allowed
    settings = OptimiserSettings(turnover_cost=1.0, weight_cap=0.2)
    weights = PortfolioOptimiser().solve(per_period_alpha(n), risk_model(n), previous, settings)
    assert weights.weights[3] <= 0.2


def test_unscored_assets_end_at_zero_even_when_held():
    n = 10
    alpha = per_period_alpha(n)
    alpha[[2, 7]] = np.nan
    previous = np.zeros(n)
    previous[[2, 7]] = 0.4  # held, now unscored, and over the 0.2 cap
    result = PortfolioOptimiser().solve(alpha, risk_model(n), previous, OptimiserSettings())
    assert result.weights[2] == 0.0 and result.weights[7] == 0.0


def test_an_unreachable_turnover_cap_is_an_error_that_says_why():
    n = 10
    previous = np.zeros(n)
    previous[:2] = 0.5  # 0.3 over the 0.2 cap each: 0.6 must be sold
    settings = OptimiserSettings(weight_cap=0.2, turnover_cap=0.01)
    with pytest.raises(OptimisationError) as raised:
        PortfolioOptimiser().solve(per_period_alpha(n), risk_model(n), previous, settings)
    message = str(raised.value)
    assert "infeasible" in message
    assert "CLARABEL" in message
    assert "turnover_cap 0.01" in message
    assert "turnover needed just to meet the weight bounds 0.6" in message


def test_a_failing_solver_falls_back_to_the_next(monkeypatch):
    monkeypatch.setitem(
        optimiser_module._SOLVER_OPTIONS, "CLARABEL", {"direct_solve_method": "no-such-method"}
    )
    n = 8
    risk = risk_model(n)
    alpha = per_period_alpha(n)
    settings = OptimiserSettings(weight_cap=0.3)
    result = PortfolioOptimiser().solve(alpha, risk, np.zeros(n), settings)
    monkeypatch.undo()
    reference = PortfolioOptimiser().solve(alpha, risk, np.zeros(n), settings)
    assert result.status == "optimal"
    np.testing.assert_allclose(result.weights, reference.weights, atol=1e-6)


def test_settings_and_shapes_are_checked():
    with pytest.raises(ValueError, match="weight_cap must be > 0, received 0"):
        OptimiserSettings(weight_cap=0.0)
    with pytest.raises(ValueError, match="net_min must be <= net_max"):
        OptimiserSettings(net_min=0.5, net_max=0.1)
    with pytest.raises(ValueError, match="must agree on N"):
        PortfolioOptimiser().solve(np.zeros(3), risk_model(4), np.zeros(3), OptimiserSettings())


# -- one problem per shape ------------------------------------------------------------------------
def test_a_shape_is_built_once_and_reused(monkeypatch):
    built = []
    original = optimiser_module._build

    def counting_build(*key):
        built.append(key)
        return original(*key)

    monkeypatch.setattr(optimiser_module, "_build", counting_build)
    optimiser = PortfolioOptimiser()
    risk = risk_model(12)
    first = optimiser.solve(per_period_alpha(12, 1), risk, np.zeros(12), OptimiserSettings())
    problem = optimiser.problem(12, 12, True)
    second = optimiser.solve(per_period_alpha(12, 2), risk, first.weights, OptimiserSettings())
    assert optimiser.problem(12, 12, True) is problem
    assert built == [(12, 12, True)]  # T = 120 > N = 12: the factor is the 12 x 12 R of a QR
    assert not np.allclose(first.weights, second.weights)  # the new values were used

    optimiser.solve(per_period_alpha(12), risk, np.zeros(12), OptimiserSettings(long_only=False))
    assert built == [(12, 12, True), (12, 12, False)]


def test_a_fresh_problem_gives_the_same_answer_as_a_reused_one():
    risk = risk_model(15)
    alphas = [per_period_alpha(15, seed) for seed in range(3)]
    reused = PortfolioOptimiser()
    for alpha in alphas:
        warm = reused.solve(alpha, risk, np.zeros(15), OptimiserSettings()).weights
    cold = PortfolioOptimiser().solve(alphas[-1], risk, np.zeros(15), OptimiserSettings()).weights
    np.testing.assert_allclose(warm, cold, atol=1e-7)


@pytest.mark.parametrize("long_only", [True, False])
def test_the_problem_is_dpp(long_only):
    assert PortfolioOptimiser().problem(7, 5, long_only).is_dpp()
