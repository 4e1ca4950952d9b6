"""PeriodData from FactorSnapshots: exposures aligned on one universe whatever order each
snapshot lists its assets in, returns from t to t+1 known at t+1, features in their documented
layout; the rank labels, windows, usable rows and normalisation the models train on."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from engine.events import FactorSnapshot
from strategies.models.base import ModelError
from strategies.models.dataset import (
    Normaliser,
    PeriodData,
    build_period_data,
    rank_labels,
    windows,
)

NAN = math.nan
T0 = datetime(2024, 1, 5, 21, 0, tzinfo=UTC)
FACTORS = ("mom", "val")
# DDD is in the universe but in no snapshot: its exposures must stay missing throughout.
UNIVERSE = ("AAA", "BBB", "CCC", "DDD")
MARKET = {
    "market_return": 0.003,
    "market_volatility": 0.02,
    "market_drawdown": -0.1,
    "breadth": 0.6,
    "dispersion": 0.04,
}

# (symbols in the snapshot's own order, one column of values per factor in that order,
#  factor_ic, factor_returns, market_state)
RAW: list[tuple[tuple[str, ...], tuple[tuple[float | None, ...], ...], dict, dict, dict]] = [
    (
        ("AAA", "BBB", "CCC"),
        ((1.0, 2.0, 3.0), (-1.0, None, 0.5)),
        {"mom": 0.1, "val": -0.2},
        {"mom": 0.01, "val": None},
        MARKET,
    ),
    (
        ("CCC", "AAA", "BBB"),
        ((30.0, 10.0, 20.0), (0.3, -0.1, 0.2)),
        {},
        {"mom": NAN, "val": -0.02},
        {"breadth": NAN, "dispersion": 0.05},
    ),
    (
        ("BBB", "AAA"),
        ((200.0, 100.0), (None, 0.7)),
        {"mom": 0.3, "val": None},
        {"mom": 0.03, "val": 0.04},
        {"market_return": -0.01},
    ),
    (
        ("AAA", "BBB", "CCC"),
        ((1000.0, 2000.0, 3000.0), (0.1, 0.2, 0.3)),
        {"mom": -0.4, "val": 0.5},
        {},
        MARKET,
    ),
]
CLOSES = np.array(
    [
        [10.0, 20.0, NAN, 5.0],
        [11.0, 19.0, 40.0, 5.5],
        [12.1, 19.0, 44.0, NAN],
        [11.0, 38.0, 33.0, 6.0],
    ]
)


def snapshots(
    raw: list[tuple[tuple[str, ...], tuple[tuple[float | None, ...], ...], dict, dict, dict]],
    factors: tuple[str, ...] = FACTORS,
) -> list[FactorSnapshot]:
    return [
        FactorSnapshot(
            asof=T0 + timedelta(days=t),
            symbols=symbols,
            factor_names=factors,
            exposures=exposures,
            factor_ic=ic,
            factor_returns=spread,
            market_state=market,
        )
        for t, (symbols, exposures, ic, spread, market) in enumerate(raw)
    ]


def number(value: float | None) -> float:
    """How a feature reads a missing value: no evidence, 0."""
    return 0.0 if value is None or math.isnan(value) else value


@pytest.fixture(scope="module")
def data() -> PeriodData:
    return build_period_data(snapshots(RAW), UNIVERSE, CLOSES)


def test_exposures_are_aligned_on_the_universe_whatever_each_snapshot_order(data: PeriodData):
    """Each snapshot lists its assets in its own order; a missing asset and a None read NaN."""
    assert data.exposures.shape == (4, 2, 4)
    for t, (symbols, columns, *_rest) in enumerate(RAW):
        for j in range(len(FACTORS)):
            by_symbol = dict(zip(symbols, columns[j]))
            for i, symbol in enumerate(UNIVERSE):
                value = by_symbol.get(symbol)
                found = data.exposures[t, j, i]
                if value is None:
                    assert np.isnan(found), (t, j, symbol)
                else:
                    assert found == np.float32(value), (t, j, symbol)
    assert np.isnan(data.exposures[:, :, UNIVERSE.index("DDD")]).all()


def test_returns_run_from_one_snapshot_to_the_next_and_the_last_is_unknown(data: PeriodData):
    """Row t's label is close[t+1] / close[t] - 1; no next close, no label."""
    expected = np.full((4, 4), NAN)
    for t in range(3):
        for i in range(4):
            expected[t, i] = CLOSES[t + 1, i] / CLOSES[t, i] - 1.0
    np.testing.assert_allclose(data.returns, expected, rtol=1e-6)
    assert np.isnan(data.returns[-1]).all()
    assert np.isnan(data.returns[0, 2]) and np.isnan(data.returns[1, 3])  # a NaN close


def test_features_follow_feature_names_with_missing_values_zero(data: PeriodData):
    assert data.feature_names == (
        "ic:mom",
        "ic:val",
        "ls:mom",
        "ls:val",
        "market_return",
        "market_volatility",
        "market_drawdown",
        "breadth",
        "dispersion",
    )
    for t, (_symbols, _columns, ic, spread, market) in enumerate(RAW):
        expected = (
            [number(ic.get(f)) for f in FACTORS]
            + [number(spread.get(f)) for f in FACTORS]
            + [number(market.get(name)) for name in data.feature_names[4:]]
        )
        np.testing.assert_array_equal(data.features[t], expected)


def test_times_are_the_snapshot_times_and_a_label_is_known_at_the_next(data: PeriodData):
    expected = [np.datetime64("2024-01-05T21:00", "ns") + np.timedelta64(t, "D") for t in range(4)]
    np.testing.assert_array_equal(data.times, expected)
    np.testing.assert_array_equal(data.label_times[:-1], expected[1:])
    assert np.isnat(data.label_times[-1])
    assert data.symbols == UNIVERSE and data.factors == FACTORS


def test_an_offset_asof_is_read_as_its_utc_instant():
    """FactorSnapshot.asof only has to be tz-aware; the instant is what counts."""
    plus_two = timezone(timedelta(hours=2))
    shifted = [
        FactorSnapshot(
            asof=s.asof.astimezone(plus_two),
            symbols=s.symbols,
            factor_names=s.factor_names,
            exposures=s.exposures,
        )
        for s in snapshots(RAW)
    ]
    data = build_period_data(shifted, UNIVERSE, CLOSES)
    assert data.times[0] == np.datetime64("2024-01-05T21:00", "ns")


# -- refusals ------------------------------------------------------------------------------------
def test_fewer_than_three_snapshots_are_refused():
    with pytest.raises(ModelError, match="at least 3 factor snapshots, received 2"):
        build_period_data(snapshots(RAW[:2]), UNIVERSE, CLOSES[:2])


def test_snapshots_of_different_factor_sets_are_refused():
    mixed = snapshots(RAW[:2])
    symbols, columns, *_ = RAW[2]
    mixed.append(
        FactorSnapshot(
            asof=T0 + timedelta(days=2),
            symbols=symbols,
            factor_names=("mom",),
            exposures=columns[:1],
        )
    )
    with pytest.raises(ModelError, match=r"has factors \['mom'\], the first one \['mom', 'val'\]"):
        build_period_data(mixed, UNIVERSE, CLOSES[:3])


@pytest.mark.parametrize("shape", [(4, 3), (3, 4), (4,)])
def test_mis_shaped_closes_are_refused(shape: tuple[int, ...]):
    closes = np.ones(shape)
    with pytest.raises(ModelError, match=r"closes are shaped .*expected \(4, 4\)"):
        build_period_data(snapshots(RAW), UNIVERSE, closes)


# -- rank labels ---------------------------------------------------------------------------------
def ranks_by_hand(row: list[float]) -> list[float]:
    """Distinct finite values ranked 0..n-1, scaled to [-0.5, 0.5]; the others NaN."""
    valid = [v for v in row if math.isfinite(v)]
    if len(valid) < 2:
        return [NAN] * len(row)
    return [
        sum(other < v for other in valid) / (len(valid) - 1) - 0.5 if math.isfinite(v) else NAN
        for v in row
    ]


def test_rank_labels_are_cross_sectional_ranks_scaled_to_half_a_unit():
    rng = np.random.default_rng(5)
    returns = rng.normal(0.0, 0.02, (6, 9))
    returns[1, [0, 4]] = NAN
    returns[2, 3] = np.inf  # a zero close: not a return
    returns[3, :8] = NAN  # one valid asset: nothing to rank
    returns[4, 2:] = NAN  # two valid assets
    labels = rank_labels(returns)
    expected = np.array([ranks_by_hand(list(row)) for row in returns])
    np.testing.assert_allclose(labels, expected, rtol=1e-6, atol=1e-7)
    assert np.isnan(labels[3]).all()
    finite = labels[np.isfinite(labels)]
    assert finite.min() == -0.5 and finite.max() == 0.5
    for t in (0, 1, 2, 5):
        row = labels[t][np.isfinite(labels[t])]
        assert row.min() == -0.5 and row.max() == 0.5


# -- windows, usable rows, normalisation ---------------------------------------------------------
@pytest.mark.parametrize("shape", [(12, 3), (12, 2, 4)])
def test_windows_are_the_trailing_slices_of_each_row(shape: tuple[int, ...]):
    values = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    rows = np.array([3, 4, 7, 11])
    lookback = 4
    expected = np.stack([values[t - lookback + 1 : t + 1] for t in rows])
    np.testing.assert_array_equal(windows(values, rows, lookback), expected)


def weekly_data(periods: int, label_delay: int = 1) -> PeriodData:
    """PeriodData whose row t's label is known ``label_delay`` periods later."""
    times = np.datetime64("2021-01-01", "ns") + np.arange(periods) * np.timedelta64(7, "D")
    label_times = np.full(periods, np.datetime64("NaT", "ns"))
    label_times[: periods - label_delay] = times[label_delay:]
    return PeriodData(
        times=times,
        label_times=label_times,
        symbols=("A", "B"),
        factors=("f",),
        features=np.zeros((periods, 7)),
        exposures=np.zeros((periods, 1, 2), dtype=np.float32),
        returns=np.zeros((periods, 2), dtype=np.float32),
    )


@pytest.mark.parametrize("cutoff", [1, 2, 9, 19])
def test_usable_rows_have_a_label_known_at_the_cutoff(cutoff: int):
    """The row just before the cutoff (label known exactly at times[cutoff]) is usable, the
    cutoff's own row (label one period later) is not."""
    data = weekly_data(20)
    usable = data.usable_before(cutoff)
    assert (data.label_times[usable] <= data.times[cutoff]).all()
    np.testing.assert_array_equal(usable, np.arange(cutoff))
    assert data.label_times[cutoff - 1] == data.times[cutoff]
    assert cutoff - 1 in usable and cutoff not in usable


def test_a_label_that_arrives_later_keeps_its_row_out_longer():
    """Labels known two periods on: the row before the cutoff is not usable yet."""
    data = weekly_data(20, label_delay=2)
    usable = data.usable_before(10)
    np.testing.assert_array_equal(usable, np.arange(9))
    assert (data.label_times[usable] <= data.times[10]).all()


def test_normaliser_standardises_with_training_statistics_and_clips_at_five():
    rng = np.random.default_rng(2)
    train = np.column_stack([rng.normal(3.0, 2.0, 50), np.full(50, 7.0)])
    normaliser = Normaliser.fit(train)
    mean, std = train[:, 0].mean(), train[:, 0].std()
    later = np.array([[3.0 + 2.0 * std, 7.0], [mean + 9.0 * std, 8.0], [mean - 6.0 * std, 6.0]])
    out = normaliser.apply(later)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], (later[0, 0] - mean) / std, rtol=1e-6)
    assert out[1, 0] == 5.0 and out[2, 0] == -5.0
    # A constant training column has no spread: it is centred, not divided by zero.
    np.testing.assert_array_equal(out[:, 1], [0.0, 1.0, -1.0])
