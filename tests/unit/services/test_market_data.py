"""The replay is the simulated-time driver: bars at their close, ticks after a same-instant bar,
decisions pinned to the last bar closing at or before the tick, nothing after the last bar."""

from __future__ import annotations

from datetime import UTC, timedelta

import numpy as np
from structlog.testing import capture_logs

from engine.bus import MemoryBus
from engine.clock import SimulatedClock
from engine.data import synthetic_panel
from engine.events import BarSet, RebalanceDue
from engine.scheduling import build_trigger
from services.daemons.market_data import MarketDataService, replay_steps, to_datetime


def test_tick_at_a_bar_close_comes_after_that_bar_and_decides_on_it():
    panel = synthetic_panel(3, 6, start="2024-01-01")  # daily bars closing at 00:00
    steps = list(replay_steps(panel, build_trigger(cron="0 0 * * *")))
    kinds = ["bar" if s.bar_index is not None else "tick" for s in steps]
    assert kinds == ["bar", "tick"] * 6
    for bar, tick in zip(steps[::2], steps[1::2]):
        assert tick.due == bar.time == tick.decision_time


def test_decision_time_is_the_last_close_at_or_before_the_tick_and_none_after_the_data():
    panel = synthetic_panel(3, 40, start="2024-01-01", timeframe="1D")
    closes = [to_datetime(t) for t in panel.close_time]
    ticks = [s for s in replay_steps(panel, build_trigger(cron="0 12 * * MON")) if s.due]
    assert ticks, "weekly ticks expected"
    for tick in ticks:
        assert tick.decision_time == max(c for c in closes if c <= tick.due)
        assert tick.due < tick.decision_time + timedelta(days=1)
    assert ticks[-1].due <= closes[-1]
    times = [s.time for s in replay_steps(panel, build_trigger(cron="0 12 * * MON"))]
    assert times == sorted(times)


def test_bar_sets_leave_out_symbols_without_a_bar_and_carry_the_panel_values():
    panel = synthetic_panel(4, 5)
    panel.close[2, 1] = np.nan
    market = MarketDataService(MemoryBus(), panel, None, "none")
    full, partial = market.bar_set(1), market.bar_set(2)
    assert isinstance(full, BarSet) and full.symbols == panel.symbols
    assert full.close == tuple(panel.close[1])
    assert partial.symbols == tuple(s for i, s in enumerate(panel.symbols) if i != 1)
    assert partial.open == tuple(np.delete(panel.open[2], 1))
    assert partial.close_time == to_datetime(panel.close_time[2])


def test_publish_moves_the_clock_and_publishes_in_order():
    panel = synthetic_panel(2, 10, start="2024-01-01")
    bus = MemoryBus()
    clock = SimulatedClock(to_datetime(panel.bar_open[0]))
    market = MarketDataService(bus, panel, build_trigger(cron="0 0 * * WED"), "weekly", clock)
    for step in market.steps():
        market.publish(step)
        assert clock.now() == step.time
    consumer = bus.consumer("probe", "p", ["bars", "schedule"])
    deliveries = consumer.read(100)
    ticks = [d.event.payload for d in deliveries if isinstance(d.event.payload, RebalanceDue)]
    assert market.bars_published == 10 and len(ticks) == market.ticks_published >= 1
    assert all(t.rebalance_id == f"rb-weekly-{t.due:%Y%m%dT%H%M%SZ}" for t in ticks)


def test_bad_bars_never_reach_the_bus_and_are_logged_and_counted():
    from structlog.testing import capture_logs

    panel = synthetic_panel(3, 4, start="2024-01-01")
    panel.high[1, 2] = panel.low[1, 2] / 2  # high below low
    panel.volume[2, 0] = -5.0
    market = MarketDataService(MemoryBus(), panel, None, "none")
    with capture_logs() as logs:
        one, two = market.bar_set(1), market.bar_set(2)
    assert panel.symbols[2] not in one.symbols and panel.symbols[0] not in two.symbols
    rejected = [(e["symbol"], e["reason"]) for e in logs if e["event"] == "data.rejected"]
    assert rejected == [(panel.symbols[2], "high below low"), (panel.symbols[0], "negative volume")]
    assert market.rejected == 2


def test_bars_stamped_in_the_future_are_rejected():
    from datetime import datetime

    panel = synthetic_panel(2, 3, start="2024-01-01")
    market = MarketDataService(MemoryBus(), panel, None, "none")
    market._now = lambda: datetime(2024, 1, 3, 12, tzinfo=UTC)  # bar 1 closed, bar 2 not yet
    assert market.bar_set(1) is not None
    assert market.bar_set(2) is None and market.rejected == 2


def test_a_block_rejects_a_bad_bar_once_even_in_its_first_row():
    import dataclasses

    panel = synthetic_panel(3, 10, seed=1)
    close = panel.close.copy()
    close[0, 1] = -1.0
    market = MarketDataService(MemoryBus(), dataclasses.replace(panel, close=close), None, "none")
    with capture_logs() as logs:
        block = market.bar_block(0, 10)
    assert market.rejected == 1
    assert [(e["symbol"], e["reason"]) for e in logs if e["event"] == "data.rejected"] == [
        (panel.symbols[1], "non-positive close")
    ]
    assert np.isnan(block.matrix("close")[0, 1]) and block.matrix("close")[1, 1] == close[1, 1]


def test_a_still_forming_last_bar_is_rejected_by_its_close_not_its_open():
    from datetime import datetime

    panel = synthetic_panel(2, 3, start="2024-01-01")  # the last daily bar opens 2024-01-03
    now = datetime(2024, 1, 3, 1, tzinfo=UTC)  # an hour after it opened, 23 h before its close
    market = MarketDataService(MemoryBus(), panel, None, "none")
    market._now = lambda: now
    with capture_logs() as logs:
        assert market.bar_set(1) is not None
        assert market.bar_set(2) is None
    assert market.rejected == 2
    (line,) = [e for e in logs if e["event"].startswith("data.")]
    assert line["event"] == "data.not_closed" and line["bar_time"] == "2024-01-03T00:00:00Z"
    assert line["symbols"] == 2 and line["now"] == "2024-01-03T01:00:00Z"

    blocks = MarketDataService(MemoryBus(), panel, None, "none")
    blocks._now = lambda: now
    block = blocks.bar_block(0, 3)
    assert blocks.rejected == 2
    assert np.isnan(block.matrix("close")[2]).all()
    assert (block.matrix("close")[:2] == panel.close[:2]).all()


def test_a_replay_past_now_logs_one_line_not_one_per_symbol_and_bar():
    from datetime import datetime

    panel = synthetic_panel(50, 40, start="2024-01-01")
    market = MarketDataService(MemoryBus(), panel, None, "none")
    market._now = lambda: datetime(2024, 1, 11, tzinfo=UTC)  # bar i closes on Jan 2 + i days
    with capture_logs() as logs:
        published = [market.bar_set(i) is not None for i in range(40)]
    assert published == [True] * 10 + [False] * 30
    assert market.rejected == 30 * 50
    assert [e["event"] for e in logs if e["event"].startswith("data.")] == ["data.not_closed"]
