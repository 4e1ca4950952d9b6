"""Every figure of ``strategy_metrics`` against pandas on a real equity curve, drawdown durations
against hand-made curves and a plain loop, and the per-regime split against the returns of each
regime taken directly.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.evaluation.performance import drawdown_duration, metrics_by_regime, strategy_metrics
from engine.evaluation.regimes import BEAR, BULL, HIGH_VOLATILITY

ROOT = Path(__file__).resolve().parents[4]
STOCKS = ROOT / "engine/data/sample/us_stocks_1d_2014-2024.csv.gz"
DAYS_PER_YEAR = 252


@cache
def stock_equity() -> pd.Series:
    """An equal-weight book of the sample's US stocks, 2014-2024, from 100: the COVID crash and
    the 2022 fall in one curve."""
    closes = pd.read_csv(STOCKS, index_col="date", parse_dates=["date"])
    returns = closes.pct_change(fill_method=None).mean(axis=1).iloc[1:]
    return 100.0 * (1.0 + returns).cumprod()


def looped_durations(equity: list[float]) -> tuple[int, bool, int]:
    """Walk the curve once: (periods of the deepest drawdown, recovered?, longest spell)."""
    peak_value, peak_at = equity[0], 0
    deepest, deepest_spell = 0.0, (0, True)
    spells: list[tuple[int, int, bool]] = []  # (peak index, periods, recovered)
    for t, value in enumerate(equity):
        if value >= peak_value:
            if t - peak_at > 1:
                spells.append((peak_at, t - peak_at, True))
            peak_value, peak_at = value, t
        elif 1 - value / peak_value > deepest:
            deepest = 1 - value / peak_value
            deepest_spell = (peak_at, 0, False)
    last = len(equity) - 1
    if peak_at < last:
        spells.append((peak_at, last - peak_at, False))
    longest = max((periods for _, periods, _ in spells), default=0)
    if deepest == 0:
        return 0, True, longest
    spell = next(s for s in spells if s[0] == deepest_spell[0])
    return spell[1], spell[2], longest


@pytest.mark.parametrize(
    ("curve", "deepest", "recovered", "longest"),
    [
        # 1-4 under the high of 0, back at 5; 6 under 5 (deeper), back at 7.
        ([100, 90, 95, 97, 99, 101, 70, 102], 2, True, 5),
        # Deepest at 6 (-25%), from the high at 5 to 8; the curve ends under the high at 8.
        ([100, 110, 99, 105, 110, 120, 90, 95, 121, 100, 105], 3, True, 3),
        # Never back: from the high at 1 to the last point.
        ([100, 120, 60, 80], 2, False, 2),
        # A flat high: the drawdown starts from its last point, back at an equal value.
        ([1.0, 1.0, 0.5, 1.0], 2, True, 2),
        ([1.0, 1.1, 1.2, 1.3], 0, True, 0),
        ([1.0, 0.9], 1, False, 1),
    ],
)
def test_drawdown_durations_of_hand_made_curves(curve, deepest, recovered, longest):
    result = drawdown_duration(curve)
    assert (result.deepest, result.deepest_recovered, result.longest) == (
        deepest,
        recovered,
        longest,
    )
    assert looped_durations(curve) == (deepest, recovered, longest)


@pytest.mark.parametrize("seed", range(5))
def test_drawdown_durations_agree_with_a_loop_on_random_walks(seed):
    rng = np.random.default_rng(seed)
    curve = 100 * np.cumprod(1 + rng.normal(0.0003, 0.01, 1500))
    result = drawdown_duration(curve)
    assert (result.deepest, result.deepest_recovered, result.longest) == looped_durations(
        curve.tolist()
    )


def test_the_figures_of_a_real_curve_agree_with_pandas():
    equity = stock_equity()
    returns = equity.pct_change().iloc[1:]
    years = (len(equity) - 1) / DAYS_PER_YEAR
    cagr = (equity.iloc[-1] / equity.iloc[0]) ** (1 / years) - 1
    deepest = (1 - equity / equity.cummax()).max()
    downside = math.sqrt((returns.clip(upper=0) ** 2).mean())

    figures = strategy_metrics(equity, DAYS_PER_YEAR)

    assert figures.periods == len(returns)
    assert figures.total_return == pytest.approx(equity.iloc[-1] / equity.iloc[0] - 1, rel=1e-12)
    assert figures.annualised_return == pytest.approx(cagr, rel=1e-10)
    assert figures.annualised_volatility == pytest.approx(
        returns.std() * math.sqrt(DAYS_PER_YEAR), rel=1e-10
    )
    assert figures.sharpe_ratio == pytest.approx(
        returns.mean() / returns.std() * math.sqrt(DAYS_PER_YEAR), rel=1e-10
    )
    assert figures.sortino_ratio == pytest.approx(
        returns.mean() / downside * math.sqrt(DAYS_PER_YEAR), rel=1e-10
    )
    assert figures.max_drawdown == pytest.approx(deepest, rel=1e-12)
    assert figures.calmar_ratio == pytest.approx(cagr / deepest, rel=1e-10)
    for confidence, var, shortfall in (
        (0.95, figures.var_95, figures.expected_shortfall_95),
        (0.99, figures.var_99, figures.expected_shortfall_99),
    ):
        cutoff = returns.quantile(1 - confidence)  # pandas' linear interpolation
        assert var == pytest.approx(-cutoff, rel=1e-10)
        assert shortfall == pytest.approx(-returns[returns <= cutoff].mean(), rel=1e-10)
    assert figures.period_hit_rate == pytest.approx((returns > 0).mean())
    looped = looped_durations(equity.tolist())
    assert (
        figures.max_drawdown_duration,
        figures.max_drawdown_recovered,
        figures.longest_drawdown_duration,
    ) == looped
    assert figures.var_backtest is None and figures.annual_turnover is None
    assert figures.fees_paid is None and figures.trade_hit_rate is None


def test_the_var_forecasts_are_backtested_with_kupiec():
    equity = stock_equity()
    returns = equity.pct_change().iloc[1:]
    # A rolling 250-day historical 99% VaR known the day before each return.
    forecasts = -returns.rolling(250).quantile(0.01).shift(1)
    checked = forecasts.notna()
    breaches = int((-returns[checked] > forecasts[checked]).sum())
    observed = int(checked.sum())
    rate = breaches / observed
    log_null = (observed - breaches) * math.log(0.99) + breaches * math.log(0.01)
    log_observed = (observed - breaches) * math.log(1 - rate) + breaches * math.log(rate)

    backtest = strategy_metrics(
        equity, DAYS_PER_YEAR, var_forecasts=forecasts, var_confidence=0.99
    ).var_backtest

    assert backtest is not None
    assert (backtest.breaches, backtest.observations) == (breaches, observed)
    assert backtest.statistic == pytest.approx(-2 * (log_null - log_observed), rel=1e-9)
    # A year of history lags the regime changes: more breaches than 1%.
    assert backtest.breach_rate > 0.01


def test_turnover_fees_and_trades_are_summarised():
    equity = [100.0, 101.0, 100.5, 102.0, 103.0]
    figures = strategy_metrics(
        equity,
        DAYS_PER_YEAR,
        turnover=[0.5, 0.1, np.nan, 0.3],
        fees=[0.05, 0.01, 0.0, 0.03],
        trade_pnls=[1.5, -0.2, 0.0, 3.0, -1.0],
    )
    assert figures.annual_turnover == pytest.approx((0.5 + 0.1 + 0.3) / 3 * DAYS_PER_YEAR)
    assert figures.fees_paid == pytest.approx(0.09)
    assert figures.trade_hit_rate == pytest.approx(2 / 5)  # a flat trade is no hit
    assert strategy_metrics(equity, DAYS_PER_YEAR, trade_pnls=[]).trade_hit_rate is None


def test_forecasts_that_never_cover_a_period_give_no_var_test():
    figures = strategy_metrics(
        [1.0, 1.1, 1.0], 12, var_forecasts=[np.nan, np.nan], var_confidence=0.9
    )
    assert figures.var_backtest is None


@pytest.mark.parametrize(
    ("equity", "options", "message"),
    [
        ([100.0], {}, "at least 2 points, received shape \\(1,\\)"),
        ([100.0, 0.0, 50.0], {}, "finite and positive"),
        ([100.0, np.nan], {}, "finite and positive"),
        ([1.0, 1.1], {"turnover": [0.1, 0.2]}, "turnover must hold one value per return \\(1"),
        ([1.0, 1.1], {"var_forecasts": [0.1]}, "var_confidence is required with var_forecasts"),
        ([1.0, 1.1], {"periods_per_year": 0}, "periods_per_year must be > 0, received 0"),
    ],
)
def test_strategy_metrics_names_what_is_wrong(equity, options, message):
    options = {"periods_per_year": DAYS_PER_YEAR, **options}
    with pytest.raises(ValueError, match=message):
        strategy_metrics(equity, **options)


def test_each_regime_gets_the_figures_of_its_own_returns():
    rng = np.random.default_rng(9)
    returns = rng.normal(0.0004, 0.01, 400)
    equity = 50.0 * np.concatenate([[1.0], np.cumprod(1 + returns)])
    labels = np.array([None] * 20 + [BULL, BEAR, BULL, HIGH_VOLATILITY] * 95, dtype=object)
    turnover = rng.uniform(0.0, 0.2, 400)
    fees = rng.uniform(0.0, 0.1, 400)
    forecasts = np.full(400, 0.015)

    by_regime = metrics_by_regime(
        equity,
        labels,
        DAYS_PER_YEAR,
        var_forecasts=forecasts,
        var_confidence=0.95,
        turnover=turnover,
        fees=fees,
    )

    assert list(by_regime) == [BULL, BEAR, HIGH_VOLATILITY]
    for regime, figures in by_regime.items():
        member = labels == regime
        own = pd.Series(returns[member])
        curve = 50.0 * (1 + own).cumprod()
        assert figures.periods == member.sum()
        assert figures.sharpe_ratio == pytest.approx(
            own.mean() / own.std() * math.sqrt(DAYS_PER_YEAR), rel=1e-10
        )
        assert figures.total_return == pytest.approx(curve.iloc[-1] / 50.0 - 1, rel=1e-10)
        assert figures.max_drawdown == pytest.approx(
            (1 - curve / curve.cummax().clip(lower=50.0)).max(), rel=1e-10
        )
        assert figures.var_95 == pytest.approx(-own.quantile(0.05), rel=1e-10)
        assert figures.annual_turnover == pytest.approx(turnover[member].mean() * DAYS_PER_YEAR)
        assert figures.fees_paid == pytest.approx(fees[member].sum())
        assert figures.var_backtest.breaches == int((-own > 0.015).sum())
        assert figures.trade_hit_rate is None
    assert sum(figures.periods for figures in by_regime.values()) == 380


def test_regimes_given_as_series_are_matched_by_date():
    equity = stock_equity().iloc[:300]
    returns = equity.pct_change().iloc[1:]
    # Labels for other dates too, and none for the last 50 returns.
    dates = pd.bdate_range(equity.index[0] - pd.Timedelta(days=30), equity.index[249])
    labels = pd.Series(np.where(np.arange(len(dates)) % 2 == 0, BULL, BEAR), index=dates)

    by_regime = metrics_by_regime(equity, labels, DAYS_PER_YEAR)

    matched = labels.reindex(returns.index)
    for regime in (BULL, BEAR):
        own = returns[matched == regime]
        assert by_regime[regime].periods == len(own)
        assert by_regime[regime].sharpe_ratio == pytest.approx(
            own.mean() / own.std() * math.sqrt(DAYS_PER_YEAR), rel=1e-10
        )
    assert sum(figures.periods for figures in by_regime.values()) == matched.notna().sum()


def test_regimes_by_position_must_match_the_returns():
    with pytest.raises(ValueError, match="one label per return \\(2, aligned with equity"):
        metrics_by_regime([1.0, 1.1, 1.2], [BULL, BEAR, BULL], DAYS_PER_YEAR)
