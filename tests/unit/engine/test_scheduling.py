"""Schedules mean the same instants in a backtest as in a daemon, and bad ones fail at load."""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from engine.errors import ConfigError
from engine.scheduling import LiveScheduler, build_trigger, fire_times, rebalance_id

UTC = UTC


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- build_trigger -------------------------------------------------------------------------------
def test_cron_expression_builds_a_utc_cron_trigger():
    trigger = build_trigger(cron="0 0 1 * *")
    assert isinstance(trigger, CronTrigger)
    assert trigger.timezone.utcoffset(None) == timedelta(0)


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("4h", timedelta(hours=4)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
    ],
)
def test_interval_builds_an_interval_trigger_of_that_length(interval, expected):
    trigger = build_trigger(interval=interval)
    assert isinstance(trigger, IntervalTrigger)
    assert trigger.interval == expected


@pytest.mark.parametrize(("cron", "interval"), [("", ""), ("0 0 1 * *", "7d")])
def test_neither_or_both_of_cron_and_interval_is_a_config_error(cron, interval):
    with pytest.raises(ConfigError, match="exactly one of cron and interval"):
        build_trigger(cron=cron, interval=interval)


def test_config_error_names_the_owner():
    with pytest.raises(ConfigError, match=r"^deploy/paper.toml \[schedule\]: set exactly one"):
        build_trigger(owner="deploy/paper.toml [schedule]")


@pytest.mark.parametrize("cron", ["0 0 1 *", "0 0 32 * *", "61 0 * * *", "every monday"])
def test_malformed_cron_is_a_config_error_naming_the_expression(cron):
    expected = f"cron must be a 5-field crontab expression, received {cron!r}"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        build_trigger(cron=cron)


@pytest.mark.parametrize("interval", ["7", "d", "7x", "0d", "-1d", "1.5h", "seven d"])
def test_malformed_interval_is_a_config_error_naming_the_value(interval):
    expected = f"interval must look like 30s, 15m, 4h, 7d or 2w, received {interval!r}"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        build_trigger(interval=interval)


# -- fire_times ----------------------------------------------------------------------------------
def test_monthly_cron_fires_at_midnight_utc_on_the_first_of_each_month():
    trigger = build_trigger(cron="0 0 1 * *")
    times = list(fire_times(trigger, utc(2023, 10, 15), utc(2024, 3, 10)))
    assert times == [
        utc(2023, 11, 1),
        utc(2023, 12, 1),
        utc(2024, 1, 1),
        utc(2024, 2, 1),
        utc(2024, 3, 1),
    ]
    assert all(t.tzinfo is not None and t.utcoffset() == timedelta(0) for t in times)


def test_fire_times_exclude_after_and_include_until():
    trigger = build_trigger(cron="0 0 1 * *")
    times = list(fire_times(trigger, utc(2024, 1, 1), utc(2024, 4, 1)))
    assert times == [utc(2024, 2, 1), utc(2024, 3, 1), utc(2024, 4, 1)]


def test_fire_times_one_microsecond_after_a_fire_time_exclude_it():
    trigger = build_trigger(cron="0 0 1 * *")
    after = utc(2024, 1, 1) + timedelta(microseconds=1)
    assert list(fire_times(trigger, after, utc(2024, 2, 1) - timedelta(microseconds=1))) == []


def test_fire_times_are_empty_when_until_is_not_after_after():
    trigger = build_trigger(cron="0 0 1 * *")
    assert list(fire_times(trigger, utc(2024, 1, 1), utc(2024, 1, 1))) == []
    assert list(fire_times(trigger, utc(2024, 3, 1), utc(2024, 1, 1))) == []


def test_weekly_cron_by_day_name_fires_every_monday_at_midnight():
    trigger = build_trigger(cron="0 0 * * MON")
    times = list(fire_times(trigger, utc(2024, 1, 1), utc(2024, 1, 31)))
    expected = [utc(2024, 1, 1) + timedelta(weeks=k) for k in range(1, 5)]
    assert times == expected
    assert all(t.weekday() == 0 for t in times)


def test_weekly_cron_day_number_one_means_monday_as_in_crontab():
    trigger = build_trigger(cron="0 0 * * 1")
    times = list(fire_times(trigger, utc(2024, 1, 1), utc(2024, 1, 31)))
    assert times and all(t.weekday() == 0 for t in times)


def test_hourly_cron_fires_on_every_hour_in_the_range():
    trigger = build_trigger(cron="0 * * * *")
    times = list(fire_times(trigger, utc(2024, 5, 5, 22, 30), utc(2024, 5, 6, 2)))
    assert times == [
        utc(2024, 5, 5, 23),
        utc(2024, 5, 6, 0),
        utc(2024, 5, 6, 1),
        utc(2024, 5, 6, 2),
    ]


def test_seven_day_interval_fires_on_mondays_anchored_at_1970_01_05():
    trigger = build_trigger(interval="7d")
    times = list(fire_times(trigger, utc(2024, 1, 1), utc(2024, 1, 29)))
    # 2024-01-01 is a Monday: excluded as ``after``; 2024-01-29 included as ``until``.
    assert times == [utc(2024, 1, 8), utc(2024, 1, 15), utc(2024, 1, 22), utc(2024, 1, 29)]
    anchor = utc(1970, 1, 5)
    assert all((t - anchor) % timedelta(days=7) == timedelta(0) for t in times)


def test_interval_fire_times_do_not_depend_on_where_the_range_starts():
    trigger = build_trigger(interval="4h")
    long_run = list(fire_times(trigger, utc(2024, 1, 1), utc(2024, 1, 3)))
    resumed = list(fire_times(trigger, utc(2024, 1, 2, 1, 17), utc(2024, 1, 3)))
    assert resumed == [t for t in long_run if t > utc(2024, 1, 2, 1, 17)]
    assert all(b - a == timedelta(hours=4) for a, b in zip(long_run, long_run[1:]))


def test_fire_times_accept_bounds_in_another_timezone_and_yield_utc():
    trigger = build_trigger(cron="0 0 1 * *")
    plus_two = timezone(timedelta(hours=2))
    # 2024-02-01 01:00+02:00 is 2024-01-31 23:00 UTC: before the February fire time.
    times = list(
        fire_times(
            trigger,
            datetime(2024, 1, 1, 2, tzinfo=plus_two),
            datetime(2024, 2, 1, 1, tzinfo=plus_two),
        )
    )
    assert times == []
    times = list(
        fire_times(
            trigger,
            datetime(2024, 1, 1, 2, tzinfo=plus_two),
            datetime(2024, 2, 1, 2, tzinfo=plus_two),
        )
    )
    assert times == [utc(2024, 2, 1)] and times[0].tzinfo == UTC


# -- rebalance_id --------------------------------------------------------------------------------
def test_rebalance_id_is_deterministic_and_names_schedule_and_utc_time():
    due = utc(2024, 2, 1, 0, 0, 0)
    assert rebalance_id("monthly", due) == "rb-monthly-20240201T000000Z"
    assert rebalance_id("monthly", due) == rebalance_id("monthly", utc(2024, 2, 1))


def test_rebalance_id_is_the_same_for_the_same_instant_in_any_timezone():
    plus_two = timezone(timedelta(hours=2))
    due = datetime(2024, 2, 1, 2, 30, tzinfo=plus_two)
    assert rebalance_id("w", due) == "rb-w-20240201T003000Z"


def test_rebalance_id_differs_between_ticks_and_between_schedules():
    ids = {
        rebalance_id("a", utc(2024, 2, 1)),
        rebalance_id("a", utc(2024, 2, 1, 0, 0, 1)),
        rebalance_id("b", utc(2024, 2, 1)),
    }
    assert len(ids) == 3


# -- LiveScheduler -------------------------------------------------------------------------------
def test_next_fire_time_is_none_before_start():
    scheduler = LiveScheduler(build_trigger(interval="1s"), lambda when: None)
    assert scheduler.next_fire_time() is None
    scheduler.shutdown()  # not started: a no-op, not an error


def test_live_scheduler_fires_through_apscheduler_and_stops_on_shutdown():
    calls: list[datetime] = []
    two_calls = threading.Event()

    def on_fire(when: datetime) -> None:
        calls.append(when)
        if len(calls) >= 2:
            two_calls.set()

    scheduler = LiveScheduler(build_trigger(interval="1s"), on_fire)
    scheduler.start()
    try:
        # Fires land on whole seconds, so two arrive within ~2 s of start.
        assert two_calls.wait(timeout=2.5), f"expected 2 fires within 2.5 s, got {len(calls)}"
        upcoming = scheduler.next_fire_time()
        assert upcoming is not None and upcoming.utcoffset() == timedelta(0)
    finally:
        scheduler.shutdown()
    fired = len(calls)
    assert fired >= 2
    assert all(when.tzinfo is not None for when in calls)
    assert all(a < b for a, b in zip(calls, calls[1:]))
    # Wait past the fire time that was next at shutdown: nothing more may arrive.
    time.sleep(max(0.0, (upcoming - datetime.now(UTC)).total_seconds()) + 0.2)
    assert len(calls) == fired


@pytest.mark.parametrize(
    ("field", "weekdays"),
    [
        ("1-5", {0, 1, 2, 3, 4}),  # crontab Monday..Friday
        ("0", {6}),
        ("7", {6}),  # both mean Sunday
        ("5-7", {4, 5, 6}),  # Friday..Sunday
        ("*/2", {6, 1, 3, 5}),  # Sun, Tue, Thu, Sat
        ("MON,wed", {0, 2}),
    ],
)
def test_day_of_week_follows_crontab_numbering(field, weekdays):
    times = list(
        fire_times(build_trigger(cron=f"0 0 * * {field}"), utc(2024, 1, 1), utc(2024, 1, 29))
    )
    assert {t.weekday() for t in times} == weekdays


def test_bad_day_of_week_is_a_config_error_naming_the_expression():
    with pytest.raises(ConfigError, match=r"received '0 0 \* \* 9'"):
        build_trigger(cron="0 0 * * 9")
