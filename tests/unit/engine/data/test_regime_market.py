"""The regime market follows its known regimes: per-regime drift and volatility, labels a
past-data rule recovers, regime-dependent factor payoffs, and a file round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.data.files import load_panel
from engine.data.regime_market import (
    BEAR,
    BULL,
    DEFAULT_SEGMENTS,
    HIGH_VOLATILITY,
    REGIMES,
    RegimeSegment,
    load_regimes,
    regime_panel,
    regimes_path,
    write_regime_market,
)
from engine.evaluation import regimes as evaluation_regimes

COLUMNS = ("open", "high", "low", "close", "volume")
YEAR = 365  # the panel's bars are consecutive calendar days


@pytest.fixture(scope="module")
def market():
    return regime_panel()


@pytest.fixture(scope="module")
def index_returns(market):
    # Independent of the generator: the evaluation's own index on a frame of closes.
    closes = pd.DataFrame(market.panel.close, index=market.regimes.index)
    return evaluation_regimes.equal_weight_index_returns(closes)


def test_regime_names_are_those_the_evaluation_labels_with():
    assert REGIMES == evaluation_regimes.REGIMES


def test_default_history_is_about_2500_bars_with_each_regime_at_least_twice():
    assert 2400 <= sum(segment.bars for segment in DEFAULT_SEGMENTS) <= 2600
    for regime in REGIMES:
        assert sum(segment.regime == regime for segment in DEFAULT_SEGMENTS) >= 2, regime
    kinds = [segment.regime for segment in DEFAULT_SEGMENTS]
    assert all(a != b for a, b in zip(kinds, kinds[1:])), "neighbouring segments must differ"


def test_regimes_follow_the_segments_on_the_close_times(market):
    panel, regimes = market.panel, market.regimes
    assert panel.close.shape == (2500, 30)
    assert str(regimes.index.dtype) == "datetime64[ms, UTC]"  # as report_data indexes closes
    expected_times = pd.to_datetime(panel.close_time, utc=True)
    assert (regimes.index == expected_times).all()
    assert regimes.index[0] == pd.Timestamp("2014-01-02", tz="UTC")  # the first bar's close
    assert list(regimes.cat.categories) == list(REGIMES)
    expected = np.repeat([s.regime for s in DEFAULT_SEGMENTS], [s.bars for s in DEFAULT_SEGMENTS])
    np.testing.assert_array_equal(regimes.astype(str).to_numpy(), expected)
    assert "seed 7" in market.rule and market.rule.endswith(".")


def test_index_drift_and_volatility_differ_by_regime_as_intended(index_returns, market):
    truth = market.regimes.iloc[1:]  # the index has no return on the first bar
    drift = {r: index_returns[truth == r].mean() * YEAR for r in REGIMES}
    volatility = {r: index_returns[truth == r].std() * np.sqrt(YEAR) for r in REGIMES}
    # Measured at seed 7: bull +0.41 / 0.19, bear -0.21 / 0.25, high-volatility -0.06 / 0.54.
    assert drift[BULL] > 0.2 and drift[BEAR] < -0.1
    assert drift[BULL] > drift[HIGH_VOLATILITY] > drift[BEAR] - 0.1
    assert volatility[HIGH_VOLATILITY] > 2.5 * volatility[BULL]
    assert volatility[BEAR] > 1.15 * volatility[BULL]


def test_past_data_labels_agree_with_the_truth_on_most_bars(index_returns, market):
    labels = evaluation_regimes.label_regimes(index_returns).labels
    labelled = labels.notna()
    truth = market.regimes.reindex(labels.index)
    agreement = (labels[labelled].astype(str) == truth[labelled].astype(str)).mean()
    # Measured 0.709 at seed 7 (0.68 to 0.81 over other seeds); the misses are mostly the
    # lag of the 63-bar trailing window after each regime change.
    assert labelled.sum() > 2000
    assert agreement > 0.65
    for regime in REGIMES:  # every true regime is most often labelled as itself
        assert labels[labelled & (truth == regime)].astype(str).value_counts().idxmax() == regime


def _mean_rank_correlation(signal: pd.DataFrame, forward: pd.DataFrame, bars: np.ndarray) -> float:
    daily = signal.rank(axis=1).corrwith(forward.rank(axis=1), axis=1)
    return float(daily[bars].mean())


def test_momentum_pays_in_bulls_and_reverses_in_high_volatility(market):
    log_close = pd.DataFrame(np.log(market.panel.close))
    momentum = log_close.shift(5) - log_close.shift(120)
    forward = log_close.shift(-5) - log_close
    regimes = market.regimes.to_numpy()
    # Measured at seed 7: +0.027 in bulls, -0.070 in high volatility.
    assert _mean_rank_correlation(momentum, forward, regimes == BULL) > 0.01
    assert _mean_rank_correlation(momentum, forward, regimes == HIGH_VOLATILITY) < -0.03


def test_short_term_reversal_pays_most_in_high_volatility(market):
    log_close = pd.DataFrame(np.log(market.panel.close))
    reversal = -(log_close - log_close.shift(5))
    forward = log_close.shift(-5) - log_close
    regimes = market.regimes.to_numpy()
    turbulent = _mean_rank_correlation(reversal, forward, regimes == HIGH_VOLATILITY)
    calm = _mean_rank_correlation(reversal, forward, regimes == BULL)
    # Measured at seed 7: +0.051 in high volatility, -0.033 in bulls.
    assert turbulent > 0.02 and turbulent > calm + 0.03


def test_same_seed_gives_bit_identical_markets():
    segments = (RegimeSegment(BULL, 80), RegimeSegment(HIGH_VOLATILITY, 40))
    first = regime_panel(6, segments, seed=11)
    second = regime_panel(6, segments, seed=11)
    for column in COLUMNS:
        np.testing.assert_array_equal(getattr(first.panel, column), getattr(second.panel, column))
    np.testing.assert_array_equal(first.panel.bar_open, second.panel.bar_open)
    pd.testing.assert_series_equal(first.regimes, second.regimes)
    assert first.rule == second.rule
    other = regime_panel(6, segments, seed=12)
    assert not np.array_equal(first.panel.close, other.panel.close)


def test_prices_are_positive_finite_and_ohlc_consistent(market):
    panel = market.panel
    for column in COLUMNS:
        values = getattr(panel, column)
        assert np.isfinite(values).all() and (values > 0).all(), column
    assert (panel.low <= np.minimum(panel.open, panel.close)).all()
    assert (panel.high >= np.maximum(panel.open, panel.close)).all()


def test_timeframe_start_and_suffix_shape_the_bars():
    market = regime_panel(
        2, (RegimeSegment(BEAR, 3),), start="2021-06-01", timeframe="4h", symbol_suffix=""
    )
    expected = np.datetime64("2021-06-01T00:00", "ms") + np.arange(3) * np.timedelta64(4, "h")
    np.testing.assert_array_equal(market.panel.bar_open, expected)
    assert market.panel.timeframe_label == "4h"
    assert market.panel.symbols == ("SYN000", "SYN001")
    assert market.regimes.index[0] == pd.Timestamp("2021-06-01T04:00", tz="UTC")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"n_assets": 0}, "n_assets must be an integer >= 1, received 0"),
        ({"n_assets": 2.5}, "n_assets must be an integer >= 1, received 2.5"),
        ({"segments": ()}, "segments must be a non-empty sequence"),
        ({"segments": [("bull", 10)]}, r"segments\[0\] must be a RegimeSegment"),
        ({"seed": -1}, "seed must be an integer >= 0, received -1"),
        ({"start": "not a date"}, "start must be an ISO date"),
        ({"timeframe": "1Q"}, "timeframe must be a count and a unit"),
        ({"timeframe": "0D"}, "timeframe must be a positive duration, received '0D'"),
        ({"symbol_suffix": None}, "symbol_suffix must be a string"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(arguments, message):
    with pytest.raises(ValueError, match=f"regime_panel: {message}"):
        regime_panel(**arguments)


@pytest.mark.parametrize(
    ("regime", "bars", "message"),
    [
        ("sideways", 10, "regime must be one of bull, bear, high-volatility, received 'sideways'"),
        ("bull", 0, "bars must be an integer >= 1, received 0"),
        ("bear", True, "bars must be an integer >= 1, received True"),
    ],
)
def test_bad_segments_are_refused_naming_the_field(regime, bars, message):
    with pytest.raises(ValueError, match=f"RegimeSegment: {message}"):
        RegimeSegment(regime, bars)


@pytest.mark.parametrize("name", ["market.csv", "market.csv.gz"])
def test_written_market_loads_back_equal_with_its_labels_beside_it(tmp_path, name):
    market = regime_panel(4, (RegimeSegment(BULL, 30), RegimeSegment(BEAR, 20)), seed=3)
    panel_path, labels_path = write_regime_market(market, tmp_path / name)
    assert panel_path == tmp_path / name
    assert labels_path == tmp_path / "market.regimes.csv"
    if name.endswith(".gz"):
        assert panel_path.read_bytes()[:2] == b"\x1f\x8b"  # the gzip magic number

    loaded = load_panel(panel_path)
    assert loaded.symbols == market.panel.symbols
    np.testing.assert_array_equal(loaded.bar_open, market.panel.bar_open)
    assert loaded.timeframe == market.panel.timeframe
    for column in COLUMNS:
        # repr() text parses back to the same float, so the round trip is exact.
        np.testing.assert_array_equal(getattr(loaded, column), getattr(market.panel, column))

    header = labels_path.read_text().splitlines()[:2]
    assert header == ["timestamp,regime", "2014-01-02T00:00:00+00:00,bull"]
    pd.testing.assert_series_equal(load_regimes(labels_path), market.regimes)


def test_labels_file_name_drops_the_data_suffixes(tmp_path):
    assert regimes_path(tmp_path / "a.csv.gz") == tmp_path / "a.regimes.csv"
    assert regimes_path(tmp_path / "a.gz") == tmp_path / "a.regimes.csv"
    assert regimes_path("data/a.b.csv") == regimes_path("data/a.b.csv.gz")


def test_writing_to_a_non_csv_path_is_refused(tmp_path):
    market = regime_panel(2, (RegimeSegment(BULL, 5),))
    with pytest.raises(ValueError, match="write_regime_market: path must end with .csv"):
        write_regime_market(market, tmp_path / "market.parquet")
