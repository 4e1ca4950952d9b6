"""The factor service: exposures equal the library's full-history computation after
preprocessing, rebalance-only publishing equals every-bar publishing, close-only data turns
volume factors off, last period's factor performance is reported, and a restart is warm."""

from __future__ import annotations

import numpy as np
import pytest
from structlog.testing import capture_logs

from engine.bus import MemoryBus
from engine.clock import SimulatedClock
from engine.config import FactorConfig, StrategyConfig
from engine.data import synthetic_panel
from engine.errors import ConfigError
from engine.events import RebalanceDue, make_event
from services.daemons.factor_update import FactorUpdateService, factor_label
from services.daemons.market_data import MarketDataService, to_datetime
from strategies.evaluation import quantile_spread, rank_ic
from strategies.factors import FactorInputs, compute_panel
from strategies.preprocessing import preprocess

FACTORS = (
    FactorConfig(name="momentum", params={"lookback": 10, "skip": 2}),
    FactorConfig(name="volatility", weight=-1.0, params={"lookback": 5}),
    FactorConfig(name="amihud", params={"lookback": 5}),
)


def strategy(compute_on: str = "bar", factors=FACTORS, **extra) -> StrategyConfig:
    return StrategyConfig(factors=factors, compute_on=compute_on, **extra)


def run(config: StrategyConfig, panel, bus=None, ticks_every: int = 0, start: int = 0, stop=None):
    bus = bus or MemoryBus()
    clock = SimulatedClock(to_datetime(panel.bar_open[0]))
    service = FactorUpdateService(bus, clock, config)
    service.start()
    market = MarketDataService(bus, panel, None, "none", clock)
    consumer = bus.consumer(service.name, "c", service.topics)
    for index in range(start, stop or panel.n_bars):
        bars = market.bar_set(index)
        bus.publish("bars", make_event(bars, source="md"))
        if ticks_every and index % ticks_every == ticks_every - 1:
            bus.publish(
                "schedule",
                make_event(
                    RebalanceDue(
                        rebalance_id=f"rb-{index}",
                        schedule="s",
                        due=bars.close_time,
                        decision_time=bars.close_time,
                    ),
                    source="md",
                ),
            )
        deliveries = consumer.read(100)
        for delivery in deliveries:
            service.handle(delivery.event)
        consumer.commit(deliveries)
    snapshots = [d.event.payload for d in bus.consumer("probe", "p", ["factors"]).read(10_000)]
    return {s.asof: s for s in snapshots}, service


def test_exposures_equal_the_full_history_computation_after_preprocessing():
    panel = synthetic_panel(6, 40, start="2024-01-01")
    snapshots, service = run(strategy(), panel)
    labels = tuple(factor_label(f) for f in FACTORS)
    assert service.labels == labels == ("momentum_10_2", "volatility_5", "amihud_5")
    full = compute_panel(
        [(factor_label(f), f.name, f.params) for f in FACTORS],
        FactorInputs(
            close=panel.close, open=panel.open, high=panel.high, low=panel.low, volume=panel.volume
        ),
    )
    closes = [to_datetime(t) for t in panel.close_time]
    for t in (12, 25, 39):
        raw = np.vstack([full[label][t] for label in labels])
        expected = preprocess(raw, winsorize="mad")
        got = np.array(snapshots[closes[t]].exposures, dtype=float)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_rebalance_only_publishing_equals_every_bar_publishing():
    panel = synthetic_panel(5, 40, start="2024-01-01")
    every_bar, _ = run(strategy("bar"), panel)
    at_ticks, _ = run(strategy("rebalance"), panel, ticks_every=7)
    assert len(every_bar) == 40 and len(at_ticks) == 40 // 7
    for asof, snapshot in at_ticks.items():
        np.testing.assert_array_equal(
            np.array(snapshot.exposures, dtype=float),
            np.array(every_bar[asof].exposures, dtype=float),
        )


def test_previous_period_factor_ic_and_return_are_reported():
    panel = synthetic_panel(12, 40, start="2024-01-01")
    snapshots, _ = run(strategy("rebalance"), panel, ticks_every=5)
    ordered = [snapshots[t] for t in sorted(snapshots)]
    first, second = ordered[3], ordered[4]
    previous = np.array(first.exposures, dtype=float)
    t0, t1 = ([to_datetime(c) for c in panel.close_time].index(s.asof) for s in (first, second))
    realised = panel.close[t1] / panel.close[t0] - 1.0
    expected_ic = rank_ic(previous, np.broadcast_to(realised, previous.shape))
    expected_spread = quantile_spread(previous, np.broadcast_to(realised, previous.shape))
    for j, label in enumerate(second.factor_names):
        assert second.factor_ic[label] == pytest.approx(expected_ic[j])
        assert second.factor_returns[label] == pytest.approx(expected_spread[j])
    assert {"market_return", "market_volatility", "market_drawdown", "breadth"} <= set(
        second.market_state
    )
    assert ordered[0].factor_ic == dict.fromkeys(ordered[0].factor_names)


def test_close_only_bars_turn_volume_factors_off_with_one_warning():
    panel = synthetic_panel(4, 20, start="2024-01-01")
    panel = type(panel)(
        bar_open=panel.bar_open,
        symbols=panel.symbols,
        open=panel.close,
        high=panel.close,
        low=panel.close,
        close=panel.close,
        volume=None,
        timeframe=panel.timeframe,
    )
    with capture_logs() as logs:
        snapshots, service = run(strategy(), panel)
    warnings = [e for e in logs if e["event"] == "factors.volume_factors_off"]
    assert len(warnings) == 1 and warnings[0]["factors"] == ["amihud_5"]
    assert service.labels == ("momentum_10_2", "volatility_5")
    assert all(s.factor_names == service.labels for s in snapshots.values())


@pytest.mark.parametrize("bus_kind", ["memory", "redis"])
def test_restarted_service_rebuilds_its_windows_from_consumed_bars(bus_kind, request):
    panel = synthetic_panel(5, 40, start="2024-01-01")
    uninterrupted, _ = run(strategy(), panel)
    if bus_kind == "redis":
        from engine.bus import RedisBus

        bus = RedisBus(
            request.getfixturevalue("redis_url"),
            request.getfixturevalue("namespace"),
            give_up_after_s=5,
        )
    else:
        bus = MemoryBus()
    run(strategy(), panel, bus=bus, stop=25)  # "crash" after 25 bars
    with capture_logs() as logs:
        resumed, service = run(strategy(), panel, bus=bus, start=25)
    assert any(e["event"] == "factors.warmed_up" for e in logs)
    later = [t for t in uninterrupted if t in resumed and t > to_datetime(panel.close_time[24])]
    assert len(later) == 15
    for asof in later:
        np.testing.assert_array_equal(
            np.array(resumed[asof].exposures, dtype=float),
            np.array(uninterrupted[asof].exposures, dtype=float),
        )


def test_factor_file_columns_join_as_of_their_timestamps(tmp_path):
    from strategies.preprocessing import zscore

    panel = synthetic_panel(3, 10, start="2024-01-01")
    path = tmp_path / "mine.csv"
    values = {1: (10.0, 11.0, 12.0), 4: (40.0, 42.0, 50.0)}
    rows = ["timestamp,symbol,sentiment"]
    for day, day_values in values.items():
        rows += [
            f"2024-01-0{day},{symbol},{value}" for symbol, value in zip(panel.symbols, day_values)
        ]
    path.write_text("\n".join(rows) + "\n")
    snapshots, service = run(
        strategy(factors=FACTORS[:1], factor_files=(str(path),), winsorize="none"), panel
    )
    assert service.labels == ("momentum_10_2", "sentiment")
    by_bar_day = {s.asof.day - 1: np.array(s.exposures[1], dtype=float) for s in snapshots.values()}
    for day in (1, 2, 3):  # bars opening on days 1..3 see the day-1 values
        np.testing.assert_allclose(by_bar_day[day], zscore(np.array(values[1])))
    for day in (4, 5, 9):  # from day 4 on, the day-4 values; never a later file row early
        np.testing.assert_allclose(by_bar_day[day], zscore(np.array(values[4])))


def test_unknown_factor_bad_params_and_bad_neutraliser_are_config_errors():
    with pytest.raises(ConfigError, match=r"\[strategy.factors\[0\]\] name must be one of"):
        FactorUpdateService(MemoryBus(), None, strategy(factors=(FactorConfig(name="astrology"),)))
    with pytest.raises(ConfigError, match=r"\[strategy.factors\[0\]\] params: .*skip"):
        FactorUpdateService(
            MemoryBus(),
            None,
            strategy(factors=(FactorConfig(name="momentum", params={"lookback": 3, "skip": 3}),)),
        )
    with pytest.raises(ConfigError, match=r"\[strategy.factors\[0\]\] params: .*colour"):
        FactorUpdateService(
            MemoryBus(),
            None,
            strategy(factors=(FactorConfig(name="reversal", params={"colour": 3}),)),
        )
    with pytest.raises(ConfigError, match=r"neutralize_against names unknown factors \['beta'\]"):
        FactorUpdateService(MemoryBus(), None, strategy(neutralize_against=("beta",)))


def test_a_block_of_bars_leaves_the_same_market_state_as_its_bars_one_by_one():
    # The universe widens from 9 to 30 inside the block: the market return of each bar must be
    # summed over the universe as it was then, or the rounding (and the state) would differ.
    import dataclasses

    panel = synthetic_panel(30, 80, seed=4)
    rng = np.random.default_rng(4)
    steps = rng.normal(0.0, 0.01, (80, 30))
    close = 100.0 * np.exp(np.cumsum(steps, axis=0))
    close[:50, 9:] = np.nan
    panel = dataclasses.replace(panel, close=close, open=close, high=close, low=close)
    config = strategy(
        "rebalance", factors=(FactorConfig(name="momentum", params={"lookback": 5, "skip": 1}),)
    )
    _, by_bar = run(config, panel)
    bus = MemoryBus()
    block_service = FactorUpdateService(bus, SimulatedClock(to_datetime(panel.bar_open[0])), config)
    market = MarketDataService(bus, panel, None, "none")
    block_service.handle(make_event(market.bar_block(0, 30), source="md"))
    block_service.handle(make_event(market.bar_block(30, 80), source="md"))
    last = next(reversed(by_bar._computed))
    assert next(reversed(block_service._computed)) == last
    assert block_service._computed[last].market == by_bar._computed[last].market
    assert (block_service._market_level, block_service._market_peak) == (
        by_bar._market_level,
        by_bar._market_peak,
    )
    assert list(block_service._market_returns) == list(by_bar._market_returns)
    np.testing.assert_array_equal(block_service._computed[last].raw, by_bar._computed[last].raw)
