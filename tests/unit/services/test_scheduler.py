"""Live scheduling: APScheduler fires in wall time and each fire is a RebalanceDue pinned to the
last closed bar."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from structlog.testing import capture_logs

from engine.bus import MemoryBus
from engine.events import RebalanceDue
from engine.scheduling import build_trigger
from services.daemons.scheduler import SchedulerService, last_close_at_or_before


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


# -- restarts: the last fire is read back from the schedule stream -----------------------------
T0 = datetime(2024, 5, 3, 12, 0, tzinfo=UTC)
EVERY_MINUTE = "* * * * *"


def scheduler_after_a_fire_at(
    due: datetime, now: datetime, cron: str = EVERY_MINUTE
) -> tuple[MemoryBus, SchedulerService]:
    bus = MemoryBus()
    first = SchedulerService(bus, build_trigger(cron=cron), "minutely", "1m")
    first.fire(due)
    restarted = SchedulerService(bus, build_trigger(cron=cron), "minutely", "1m", now=lambda: now)
    return bus, restarted


def ticks(bus: MemoryBus) -> list[RebalanceDue]:
    return [d.event.payload for d in bus.consumer("probe", "p", ["schedule"]).read(100)]


def test_a_fire_carries_its_scheduled_time_not_the_wall_clock():
    bus = MemoryBus()
    scheduler = SchedulerService(bus, build_trigger(cron=EVERY_MINUTE), "minutely", "1m")
    tick = scheduler.fire(T0 + timedelta(minutes=1, seconds=0.7))  # the callback ran late
    assert tick.due == T0 + timedelta(minutes=1)
    assert tick.rebalance_id == "rb-minutely-20240503T120100Z"


def test_fires_missed_while_down_are_coalesced_into_one_when_the_latest_is_within_grace():
    now = T0 + timedelta(minutes=5, seconds=10)
    bus, scheduler = scheduler_after_a_fire_at(T0, now)
    with capture_logs() as logs:
        fired = scheduler.catch_up(now)
    assert fired is not None and fired.due == T0 + timedelta(minutes=5)
    assert [t.due for t in ticks(bus)] == [T0, T0 + timedelta(minutes=5)]
    [missed] = [line for line in logs if line["event"] == "schedule.misfired"]
    assert missed["count"] == 4  # 12:01 .. 12:04, each named by its first and last
    assert missed["first"] == (T0 + timedelta(minutes=1)).isoformat()
    assert any(line["event"] == "schedule.misfire_caught_up" for line in logs)


def test_fires_missed_beyond_the_grace_are_logged_and_not_fired():
    now = T0 + timedelta(minutes=12)  # 12:05 and 12:10 missed, the latest 120 s ago
    bus, scheduler = scheduler_after_a_fire_at(T0, now, cron="*/5 * * * *")
    with capture_logs() as logs:
        assert scheduler.catch_up(now) is None
    assert [t.due for t in ticks(bus)] == [T0]
    [missed] = [line for line in logs if line["event"] == "schedule.misfired"]
    assert missed["count"] == 2 and missed["last"] == (T0 + timedelta(minutes=10)).isoformat()


def test_a_restart_before_the_next_fire_fires_nothing_and_a_first_start_catches_up_nothing():
    bus, scheduler = scheduler_after_a_fire_at(T0, T0 + timedelta(seconds=30))
    assert scheduler.catch_up(T0 + timedelta(seconds=30)) is None
    assert [t.due for t in ticks(bus)] == [T0]
    fresh = SchedulerService(MemoryBus(), build_trigger(cron=EVERY_MINUTE), "minutely", "1m")
    assert fresh.last_fire() is None and fresh.catch_up(T0) is None


def test_weekly_bars_close_on_monday_midnight_like_exchange_weekly_candles():
    wednesday = datetime(2024, 5, 8, 12, tzinfo=UTC)
    monday = datetime(2024, 5, 6, tzinfo=UTC)
    for timeframe in ("1w", "7d"):
        assert last_close_at_or_before(wednesday, timeframe) == monday
        assert last_close_at_or_before(monday, timeframe) == monday
        assert last_close_at_or_before(monday - timedelta(microseconds=1), timeframe) == (
            monday - timedelta(days=7)
        )


# -- [schedule] misfire_grace_s and leadership on the memory bus --------------------------------
def test_misfire_grace_is_a_schedule_setting_of_at_least_zero_named_when_invalid(tmp_path):
    import pytest

    from engine.config.loader import load_config
    from engine.errors import ConfigError

    assert load_config(None, environ={}).schedule.misfire_grace_s == 60
    path = tmp_path / "paper.toml"
    path.write_text("[schedule]\nmisfire_grace_s = 0\n")
    assert load_config(path, environ={}).schedule.misfire_grace_s == 0
    for bad in ("-1", '"60"', "1.5"):
        path.write_text(f"[schedule]\nmisfire_grace_s = {bad}\n")
        with pytest.raises(ConfigError, match="misfire_grace_s"):
            load_config(path, environ={})
    with pytest.raises(ValueError, match="misfire_grace_s"):
        SchedulerService(
            MemoryBus(), build_trigger(cron=EVERY_MINUTE), "m", "1m", misfire_grace_s=-1
        )


def test_the_configured_grace_decides_whether_missed_fires_are_caught_up():
    now = T0 + timedelta(minutes=5, seconds=10)  # 12:05 missed by 10 s
    for grace, caught_up in ((10, True), (9, False)):
        bus = MemoryBus()
        SchedulerService(bus, build_trigger(cron=EVERY_MINUTE), "minutely", "1m").fire(T0)
        restarted = SchedulerService(
            bus, build_trigger(cron=EVERY_MINUTE), "minutely", "1m", misfire_grace_s=grace
        )
        assert restarted._live._misfire_grace_s == grace  # APScheduler's own grace too
        assert (restarted.catch_up(now) is not None) is caught_up


def test_on_the_memory_bus_a_scheduler_always_leads():
    bus = MemoryBus()
    a = SchedulerService(bus, build_trigger(cron=EVERY_MINUTE), "minutely", "1m")
    b = SchedulerService(bus, build_trigger(cron=EVERY_MINUTE), "minutely", "1m")
    assert a.leadership.token is None and a.leadership.try_lead()
    assert a.fire(T0) is not None and b.fire(T0 + timedelta(minutes=1)) is not None
