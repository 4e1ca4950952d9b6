"""Live scheduling: APScheduler fires in wall time and each fire is a RebalanceDue pinned to the
last closed bar."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from engine.bus import MemoryBus
from engine.events import RebalanceDue
from engine.scheduling import build_trigger
from services.scheduler import SchedulerService, last_close_at_or_before


def test_last_close_is_the_bar_boundary_at_or_before_the_fire_time():
    assert last_close_at_or_before(datetime(2024, 5, 3, 13, 7, 59, tzinfo=UTC), "1h") == datetime(
        2024, 5, 3, 13, tzinfo=UTC
    )
    assert last_close_at_or_before(datetime(2024, 5, 3, tzinfo=UTC), "1d") == datetime(
        2024, 5, 3, tzinfo=UTC
    )
    assert last_close_at_or_before(datetime(2024, 5, 3, 0, 4, 59, tzinfo=UTC), "5m") == datetime(
        2024, 5, 3, 0, 0, tzinfo=UTC
    )


def test_apscheduler_fires_publish_rebalance_ticks_on_the_bus():
    bus = MemoryBus()
    scheduler = SchedulerService(bus, build_trigger(interval="1s"), "every-second", "1m")
    scheduler.start()
    try:
        deadline = time.monotonic() + 5
        while scheduler.fired < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        scheduler.shutdown()
    ticks = [d.event.payload for d in bus.consumer("probe", "p", ["schedule"]).read(10)]
    assert len(ticks) >= 2 and all(isinstance(t, RebalanceDue) for t in ticks)
    assert ticks[0].due < ticks[1].due
    for tick in ticks:
        assert tick.decision_time <= tick.due and tick.decision_time.second == 0
        assert tick.rebalance_id == f"rb-every-second-{tick.due:%Y%m%dT%H%M%SZ}"
