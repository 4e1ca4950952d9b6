"""Only one scheduler fires a schedule: the holder of an expiring Redis lock. Another takes
over at its first fire time after the holder released the lock (shut down) or let it expire
(died), and the publish itself is conditional on the lock, so a stale leader never fires."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from engine.bus import RedisBus, keys
from engine.events import RebalanceDue, decode
from engine.scheduling import RedisLeadership, build_trigger
from services.daemons.scheduler import SchedulerService

T0 = datetime(2024, 5, 3, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


@pytest.fixture
def make_scheduler(redis_url: str, namespace: str) -> Iterator[Callable[..., SchedulerService]]:
    made: list[SchedulerService] = []

    def make(interval: str = "", lock_s: float = 1.0) -> SchedulerService:
        bus = RedisBus(redis_url, namespace, give_up_after_s=5)
        trigger = build_trigger(interval=interval) if interval else build_trigger(cron="* * * * *")
        scheduler = SchedulerService(bus, trigger, "minutely", "1m", leader_lock_s=lock_s)
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.shutdown()
        assert isinstance(scheduler.bus, RedisBus)
        scheduler.bus.close()


def dues(scheduler: SchedulerService) -> list[datetime]:
    bus = scheduler.bus
    assert isinstance(bus, RedisBus)
    entries = bus.redis.xrange(keys.stream(bus.namespace, RebalanceDue.TOPIC))
    ticks = [decode(fields[b"event"]).payload for _, fields in entries]
    return [t.due for t in ticks if isinstance(t, RebalanceDue)]


def lock_value(scheduler: SchedulerService) -> bytes | None:
    bus = scheduler.bus
    assert isinstance(bus, RedisBus)
    return bus.redis.get(keys.scheduler_lock(bus.namespace, "minutely"))


def wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_two_schedulers_on_one_namespace_fire_each_due_time_once(make_scheduler):
    a, b = make_scheduler(), make_scheduler()
    with capture_logs() as logs:
        for minute in range(1, 4):
            now = T0 + minute * MINUTE + timedelta(seconds=0.3)
            first, second = (a, b) if minute % 2 else (b, a)  # either may run first
            fired = [first.fire(now), second.fire(now)]
            assert [t.due if t else None for t in fired].count(T0 + minute * MINUTE) == 1
    assert dues(a) == [T0 + m * MINUTE for m in range(1, 4)]
    assert (a.fired, b.fired) == (3, 0)  # a took the lock first and kept it
    assert lock_value(a) == a.leadership.token
    events = [line["event"] for line in logs]
    assert events.count("schedule.leader_acquired") == 1
    assert events.count("schedule.not_leader") == 3


def test_after_the_leader_dies_its_lock_expires_and_the_other_fires_the_next_due_time_once(
    make_scheduler,
):
    a, b = make_scheduler(lock_s=1.0), make_scheduler(lock_s=1.0)
    assert a.fire(T0 + MINUTE) is not None
    a.leadership.close(release=False)  # dies: neither renews nor releases its lock
    assert b.fire(T0 + 2 * MINUTE) is None  # the lock has not expired yet
    wait_until(lambda: lock_value(a) is None, timeout_s=3)
    with capture_logs() as logs:
        tick = b.fire(T0 + 3 * MINUTE)
        assert b.fire(T0 + 3 * MINUTE) is None  # a late duplicate callback publishes nothing
    assert tick is not None and tick.due == T0 + 3 * MINUTE
    assert dues(b) == [T0 + MINUTE, T0 + 3 * MINUTE]
    assert any(line["event"] == "schedule.leader_acquired" for line in logs)


def test_a_stale_leader_whose_lock_was_taken_over_does_not_publish(make_scheduler):
    a, b = make_scheduler(), make_scheduler()
    assert a.fire(T0 + MINUTE) is not None
    bus = b.bus
    assert isinstance(bus, RedisBus)
    bus.redis.delete(keys.scheduler_lock(bus.namespace, "minutely"))  # a's lock expired
    assert b.fire(T0 + 2 * MINUTE) is not None  # b took over
    with capture_logs() as logs:
        # a's own check at its fire time finds its token gone.
        assert a.fire(T0 + 3 * MINUTE) is None
        # And had that check passed just before the takeover, the publish itself still
        # checks the token in the same transaction as the XADD.
        a.leadership._held = True  # a leader that has not noticed yet
        a.leadership.try_lead = lambda: True
        assert a.fire(T0 + 3 * MINUTE) is None
    assert dues(b) == [T0 + MINUTE, T0 + 2 * MINUTE]
    assert a.fired == 1
    lost = [line for line in logs if line["event"] == "schedule.leader_lost"]
    assert len(lost) == 2 and lost[-1]["reason"] == "lost"


def test_a_new_leader_does_not_fire_again_a_due_time_already_on_the_stream(make_scheduler):
    a, b = make_scheduler(), make_scheduler()
    assert a.fire(T0 + MINUTE) is not None
    a.shutdown()  # releases the lock at once
    assert lock_value(b) is None
    with capture_logs() as logs:
        assert b.fire(T0 + MINUTE + timedelta(seconds=0.9)) is None  # its late callback
    assert [line.get("reason") for line in logs if line["event"] == "schedule.not_fired"] == [
        "duplicate"
    ]
    assert b.fire(T0 + 2 * MINUTE) is not None
    assert dues(b) == [T0 + MINUTE, T0 + 2 * MINUTE]


def test_the_holder_renews_its_lock_past_its_expiry_and_releases_it_on_close(redis_url, namespace):
    bus = RedisBus(redis_url, namespace, give_up_after_s=5)
    key = keys.scheduler_lock(namespace, "s")
    holder = RedisLeadership(bus.redis, key, timeout_s=1.0, schedule="s")
    other = RedisLeadership(bus.redis, key, timeout_s=1.0, schedule="s")
    try:
        assert holder.try_lead() and holder.token is not None
        holder.start()
        time.sleep(2.5)  # 2.5 expiries
        assert bus.redis.get(key) == holder.token
        assert not other.try_lead()
        holder.close()
        assert bus.redis.get(key) is None
        assert other.try_lead()
    finally:
        holder.close()
        other.close()
        bus.close()


def test_running_schedulers_fire_once_per_second_and_the_other_takes_over_on_shutdown(
    make_scheduler,
):
    a, b = make_scheduler(interval="1s", lock_s=2.0), make_scheduler(interval="1s", lock_s=2.0)
    a.start()
    b.start()
    wait_until(lambda: a.fired + b.fired >= 3, timeout_s=6)
    leader, other = (a, b) if a.fired else (b, a)  # whichever fired first took the lock
    leader.shutdown()
    handed_over = leader.fired
    assert other.fired == 0
    wait_until(lambda: other.fired >= 2, timeout_s=6)
    other.shutdown()
    fired = dues(a)
    assert len(fired) == len(set(fired)) == handed_over + other.fired  # one tick per due time
    assert fired == sorted(fired)
    # Due times are whole seconds apart (a loaded machine may coalesce a late fire, so the
    # gaps are not asserted: the point here is one tick per due time across the handover).
    steps = [later - earlier for earlier, later in zip(fired, fired[1:])]
    assert all(step >= timedelta(seconds=1) and step.microseconds == 0 for step in steps)
