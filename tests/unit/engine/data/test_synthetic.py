"""The synthetic market is reproducible from its seed, internally consistent, and factor-driven."""

from __future__ import annotations

import numpy as np
import pytest

from engine.data import synthetic_panel

COLUMNS = ("open", "high", "low", "close", "volume")


def test_same_seed_gives_bit_identical_arrays():
    first = synthetic_panel(8, 300, seed=11)
    second = synthetic_panel(8, 300, seed=11)
    for column in COLUMNS:
        np.testing.assert_array_equal(getattr(first, column), getattr(second, column))
    np.testing.assert_array_equal(first.bar_open, second.bar_open)
    assert first.symbols == second.symbols


def test_different_seeds_give_different_markets():
    first = synthetic_panel(8, 300, seed=11)
    second = synthetic_panel(8, 300, seed=12)
    for column in COLUMNS:
        assert not np.array_equal(getattr(first, column), getattr(second, column)), column


def test_shape_symbols_times_and_source():
    panel = synthetic_panel(5, 40, seed=3, start="2021-06-01", timeframe="4h")
    for column in COLUMNS:
        assert getattr(panel, column).shape == (40, 5)
    assert panel.symbols == (
        "SYN000/USDT",
        "SYN001/USDT",
        "SYN002/USDT",
        "SYN003/USDT",
        "SYN004/USDT",
    )
    expected = np.datetime64("2021-06-01T00:00", "ms") + np.arange(40) * np.timedelta64(4, "h")
    np.testing.assert_array_equal(panel.bar_open, expected)
    assert panel.timeframe_label == "4h"
    assert panel.source == "synthetic(seed=3)"


def test_symbol_suffix_is_applied():
    assert synthetic_panel(2, 5, symbol_suffix="").symbols == ("SYN000", "SYN001")


def test_prices_are_positive_and_finite_and_ohlc_consistent():
    panel = synthetic_panel(20, 1000, seed=5, crash_probability=0.01)
    for column in COLUMNS:
        values = getattr(panel, column)
        assert np.isfinite(values).all() and (values > 0).all(), column
    assert (panel.low <= np.minimum(panel.open, panel.close)).all()
    assert (panel.high >= np.maximum(panel.open, panel.close)).all()
    assert (panel.low <= panel.high).all()


def test_returns_share_a_common_factor_so_cross_correlation_is_positive_on_average():
    panel = synthetic_panel(15, 750, seed=9)
    returns = np.diff(np.log(panel.close), axis=0)
    correlation = np.corrcoef(returns, rowvar=False)
    off_diagonal = correlation[~np.eye(15, dtype=bool)]
    assert off_diagonal.mean() > 0.1


def test_each_bar_opens_near_the_previous_close():
    panel = synthetic_panel(10, 500, seed=2)
    gap = np.abs(np.log(panel.open[1:] / panel.close[:-1]))
    move = np.abs(np.diff(np.log(panel.close), axis=0))
    # The open only jitters around the previous close: far less than a bar's move.
    assert np.median(gap) < 0.5 * np.median(move)


@pytest.mark.parametrize(("n_assets", "n_bars"), [(0, 10), (3, 0)])
def test_empty_market_is_refused_naming_the_sizes(n_assets, n_bars):
    with pytest.raises(
        ValueError, match=f"n_assets >= 1 and n_bars >= 1, received {n_assets} and {n_bars}"
    ):
        synthetic_panel(n_assets, n_bars)
