"""The factor service's rolling window equals the plain history, and computing at rebalances
only gives the same exposures as computing on every bar."""

from __future__ import annotations

import numpy as np
import pytest

from engine.bus import MemoryBus
from engine.clock import SimulatedClock
from engine.config import FactorConfig
from engine.data import synthetic_panel
from engine.errors import ConfigError
from engine.events import FactorSnapshot, RebalanceDue, make_event
from services.factor_update import FactorUpdateService, RollingCloses
from services.market_data import MarketDataService, to_datetime
from strategies.factors.basic import momentum

FACTORS = (FactorConfig(name="momentum", lookback=10, skip=2), FactorConfig(name="low_volatility", lookback=5))


def test_rolling_window_equals_the_tail_of_the_full_history_across_shifts():
    rng = np.random.default_rng(3)
    history = rng.uniform(1, 2, (50, 3))
    closes = RollingCloses(window=7)
    symbols = ("A", "B", "C")
    for t in range(50):
        closes.append(t, symbols, tuple(history[t]))
        np.testing.assert_array_equal(closes.view(), history[max(0, t - 6):t + 1])
    np.testing.assert_array_equal(closes.view(until=47), history[41:48])


def test_new_symbols_join_with_missing_history():
    closes = RollingCloses(window=3)
    closes.append(0, ("A",), (1.0,))
    closes.append(1, ("A", "B"), (2.0, 5.0))
    view = closes.view()
    assert closes.symbols == ["A", "B"]
    assert np.isnan(view[0, 1]) and view[1].tolist() == [2.0, 5.0]


def run_factor_service(compute_on: str) -> dict:
    panel = synthetic_panel(5, 40, start="2024-01-01")
    bus = MemoryBus()
    clock = SimulatedClock(to_datetime(panel.bar_open[0]))
    service = FactorUpdateService(bus, clock, FACTORS, compute_on)
    market = MarketDataService(bus, panel, None, "none", clock)
    for index in range(panel.n_bars):
        bars = market.bar_set(index)
        service.handle(make_event(bars, source="md"))
        if index % 7 == 6 and compute_on == "rebalance":
            service.handle(make_event(RebalanceDue(rebalance_id=f"rb-{index}", schedule="s",
                                                   due=bars.close_time, decision_time=bars.close_time),
                                      source="md"))
    snapshots = [d.event.payload for d in bus.consumer("probe", "p", ["factors"]).read(1000)]
    return {s.asof: s for s in snapshots}, panel


def test_rebalance_only_exposures_equal_every_bar_exposures_and_a_direct_computation():
    every_bar, panel = run_factor_service("bar")
    at_rebalance, _ = run_factor_service("rebalance")
    assert len(every_bar) == 40 and len(at_rebalance) == 40 // 7
    for asof, snapshot in at_rebalance.items():
        assert isinstance(snapshot, FactorSnapshot)
        np.testing.assert_array_equal(np.array(snapshot.exposures, dtype=float),
                                      np.array(every_bar[asof].exposures, dtype=float))
        t = [to_datetime(c) for c in panel.close_time].index(asof)
        expected = momentum(panel.close[:t + 1], lookback=10, skip=2)
        np.testing.assert_allclose(np.array(snapshot.exposures[0], dtype=float), expected)
    assert snapshot.factor_names == ("momentum_10_2", "low_volatility_5")


def test_unknown_factor_and_bad_skip_are_config_errors():
    with pytest.raises(ConfigError, match=r"\[strategy.factors\[0\]\] name must be one of"):
        FactorUpdateService(MemoryBus(), None, (FactorConfig(name="astrology", lookback=3),))
    with pytest.raises(ConfigError, match="skip must be below lookback"):
        FactorUpdateService(MemoryBus(), None, (FactorConfig(name="momentum", lookback=3, skip=3),))
    with pytest.raises(ConfigError, match="reversal takes no skip"):
        FactorUpdateService(MemoryBus(), None, (FactorConfig(name="reversal", lookback=3, skip=1),))
