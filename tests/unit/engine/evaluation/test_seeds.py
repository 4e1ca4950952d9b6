"""The spread across seeds against the statistics module."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from engine.evaluation.performance import strategy_metrics
from engine.evaluation.seeds import spread, spread_across_seeds


def seed_runs(count: int, with_var: bool = True) -> list:
    runs = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        equity = 100 * np.cumprod(np.concatenate([[1.0], 1 + rng.normal(0.0005, 0.01, 300)]))
        options = {"var_forecasts": np.full(300, 0.02), "var_confidence": 0.99} if with_var else {}
        runs.append(strategy_metrics(equity, 252, fees=np.full(300, 0.01 * seed), **options))
    return runs


def test_spread_is_mean_sample_deviation_and_range():
    values = [1.2, 0.4, 0.9, -0.3]
    result = spread(values)
    assert result.mean == pytest.approx(statistics.fmean(values))
    assert result.std == pytest.approx(statistics.stdev(values))
    assert (result.minimum, result.maximum, result.seeds) == (-0.3, 1.2, 4)


def test_every_numeric_figure_gets_its_spread_across_seeds():
    runs = seed_runs(3)
    spreads = spread_across_seeds(runs)
    sharpes = [run.sharpe_ratio for run in runs]
    assert spreads["sharpe_ratio"].mean == pytest.approx(statistics.fmean(sharpes))
    assert spreads["sharpe_ratio"].std == pytest.approx(statistics.stdev(sharpes))
    assert spreads["fees_paid"].maximum == pytest.approx(0.01 * 2 * 300)
    assert spreads["max_drawdown_duration"].seeds == 3
    rates = [run.var_backtest.breach_rate for run in runs]
    assert spreads["var_breach_rate"].mean == pytest.approx(statistics.fmean(rates))
    # Flags and inputs no run was given have no spread.
    assert "max_drawdown_recovered" not in spreads
    assert "trade_hit_rate" not in spreads and "annual_turnover" not in spreads


def test_a_var_test_missing_from_one_seed_leaves_the_var_figures_out():
    runs = seed_runs(2) + seed_runs(1, with_var=False)
    assert "var_breach_rate" not in spread_across_seeds(runs)


def test_a_spread_needs_two_seeds():
    with pytest.raises(ValueError, match="needs at least 2 seeds, received 1"):
        spread_across_seeds(seed_runs(1))
    with pytest.raises(ValueError, match="needs at least 2 seeds, received 1"):
        spread([0.5])
