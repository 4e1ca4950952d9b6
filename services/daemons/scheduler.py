"""Scheduler service for wall-clock runs: APScheduler fires the configured trigger and each
fire becomes a RebalanceDue on the bus.

The decision time is the close of the last bar that has closed by the fire time, computed from
the bar timeframe, so the rebalancer decides on that bar even if its signal arrives later.
Replays and backtests do not use this: there the market-data replay asks the same trigger for
its fire times in simulated time.

A fire carries its scheduled time, not the wall clock's, so its rebalance id is the same
whenever the callback runs. The scheduler's state is its last fire, read back from the
``schedule`` stream on start: fires missed while it was down are coalesced into one, fired at
once if the latest is within the misfire grace (APScheduler's own policy for a running
scheduler), and logged as missed otherwise.

Only one scheduler fires a schedule: on a Redis bus the one holding the lock
``{namespace}:lock:scheduler:{schedule}`` (``RedisLeadership``: an expiring token its holder
renews). The others try to take it at each fire time, so one takes over at the first fire time
after the holder stopped (it releases the lock) or died (the lock expires). The tick itself is
appended in a transaction that WATCHes the lock and the stream: it is published only if the
lock still holds this scheduler's token and no tick of this schedule at or after the same due
time is already on the stream, so neither a stale leader nor a racing new one fires twice. On
the in-process memory bus there is no one else and the scheduler always fires.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import redis
import structlog
from apscheduler.triggers.base import BaseTrigger

from engine.bus import Bus, RedisBus, keys
from engine.events import Envelope, RebalanceDue, make_event
from engine.scheduling import (
    Leadership,
    LiveScheduler,
    RedisLeadership,
    fire_times,
    rebalance_id,
)
from engine.timeframes import timeframe_delta, utc_from_ms

log = structlog.get_logger("services.daemons.scheduler")
_PUBLISH_ATTEMPTS = 10


def last_close_at_or_before(when: datetime, timeframe: str) -> datetime:
    """Return the latest bar close time not after ``when`` for bars aligned to the epoch.

    Bars of whole weeks ('1w', '7d', '2w', ...) open on Monday 00:00 UTC, as exchange weekly
    candles do (ccxt, Binance ``1w``), so they align to 1970-01-05, the first Monday after the
    epoch (a Thursday); every other timeframe aligns to the epoch itself.
    """
    step = timeframe_delta(timeframe)
    week = timedelta(days=7)
    epoch = utc_from_ms(4 * 86_400_000 if step % week == timedelta(0) else 0)
    return epoch + ((when - epoch) // step) * step


class SchedulerService:
    """Publishes RebalanceDue at the trigger's wall-clock fire times."""

    name = "scheduler"

    def __init__(
        self,
        bus: Bus,
        trigger: BaseTrigger,
        schedule_name: str,
        timeframe: str,
        *,
        misfire_grace_s: int = 60,
        leader_lock_s: float = 30.0,
        leadership: Leadership | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if misfire_grace_s < 0:
            raise ValueError(f"misfire_grace_s must be >= 0, received {misfire_grace_s!r}")
        self.bus = bus
        self.trigger = trigger
        self.schedule_name = schedule_name
        self.timeframe = timeframe
        self.misfire_grace_s = misfire_grace_s
        self.fired = 0
        self._now = now
        self._live = LiveScheduler(trigger, self.fire, misfire_grace_s=misfire_grace_s)
        if leadership is None:
            leadership = (
                RedisLeadership(
                    bus.redis,
                    keys.scheduler_lock(bus.namespace, schedule_name),
                    timeout_s=leader_lock_s,
                    schedule=schedule_name,
                )
                if isinstance(bus, RedisBus)
                else Leadership()
            )
        self.leadership = leadership

    def scheduled_time(self, now: datetime) -> datetime:
        """Return the trigger's latest fire time at or before ``now`` within the misfire
        grace (``now`` itself if there is none), to the second."""
        grace = timedelta(seconds=self.misfire_grace_s + 1)
        fires = list(fire_times(self.trigger, now - grace, now))
        return (fires[-1] if fires else now).astimezone(UTC).replace(microsecond=0)

    def last_fire(self) -> datetime | None:
        """Return the due time of this schedule's last tick on the bus, if any."""
        event = self.bus.last_event(RebalanceDue.TOPIC)
        if event is None or not isinstance(event.payload, RebalanceDue):
            return None
        return event.payload.due if event.payload.schedule == self.schedule_name else None

    def catch_up(self, now: datetime) -> RebalanceDue | None:
        """Deal with the fires missed since the last one on the bus (a restart); return the
        tick fired for them, if any."""
        last = self.last_fire()
        if last is None:
            return None
        missed = list(fire_times(self.trigger, last, now))
        if not missed or not self.leadership.try_lead():
            return None  # nothing missed, or another scheduler leads and catches up
        latest = missed[-1]
        late_s = (now - latest).total_seconds()
        fired = self._publish(latest) if late_s <= self.misfire_grace_s else None
        dropped = missed[:-1] if fired is not None else missed
        if dropped:
            log.warning(
                "schedule.misfired",
                schedule=self.schedule_name,
                count=len(dropped),
                first=dropped[0].isoformat(),
                last=dropped[-1].isoformat(),
                misfire_grace_s=self.misfire_grace_s,
                last_fire=last.isoformat(),
            )
        if fired is not None:
            log.info(
                "schedule.misfire_caught_up",
                rebalance_id=fired.rebalance_id,
                late_s=round(late_s, 3),
                coalesced=len(missed),
            )
        return fired

    def fire(self, now: datetime) -> RebalanceDue | None:
        """Publish the tick of the fire scheduled at or just before ``now`` and return it;
        None when another scheduler leads (or has already fired it)."""
        due = self.scheduled_time(now.astimezone(UTC))
        if not self.leadership.try_lead():
            return None
        return self._publish(due)

    def _publish(self, due: datetime) -> RebalanceDue | None:
        due = due.astimezone(UTC).replace(microsecond=0)
        identifier = rebalance_id(self.schedule_name, due)
        tick = RebalanceDue(
            rebalance_id=identifier,
            schedule=self.schedule_name,
            due=due,
            decision_time=last_close_at_or_before(due, self.timeframe),
        )
        event = make_event(tick, source=self.name, corr=identifier, ts=due)
        token = self.leadership.token
        if token is None or not isinstance(self.bus, RedisBus):
            self.bus.publish(RebalanceDue.TOPIC, event)
        else:
            outcome = self._publish_as_leader(self.bus, token, event, due)
            if outcome != "published":
                log.warning(
                    "schedule.leader_lost" if outcome == "lost" else "schedule.not_fired",
                    schedule=self.schedule_name,
                    rebalance_id=identifier,
                    reason=outcome,
                )
                return None
        self.fired += 1
        log.info(
            "schedule.fired",
            rebalance_id=identifier,
            due=due.isoformat(),
            decision_time=tick.decision_time.isoformat(),
        )
        return tick

    def _publish_as_leader(
        self, bus: RedisBus, token: bytes, event: Envelope, due: datetime
    ) -> str:
        """Append ``event`` only while the lock holds ``token`` and the stream has no tick of
        this schedule at or after ``due``; return 'published', 'lost', 'duplicate' or
        'contended' (the WATCHed keys kept changing)."""
        lock_key = keys.scheduler_lock(bus.namespace, self.schedule_name)
        stream_key = keys.stream(bus.namespace, RebalanceDue.TOPIC)
        commands = bus.publish_commands(RebalanceDue.TOPIC, [event])

        def attempt() -> str:
            for _ in range(_PUBLISH_ATTEMPTS):  # a WATCHed key changed (a renewal): look again
                with bus.redis.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(lock_key, stream_key)
                        if pipe.get(lock_key) != token:
                            return "lost"
                        last = self.last_fire()
                        if last is not None and last >= due:
                            return "duplicate"
                        pipe.multi()
                        for command in commands:
                            pipe.execute_command(*command)
                        pipe.execute()
                        return "published"
                    except redis.WatchError:
                        continue
            return "contended"

        return bus.call("schedule_publish", attempt)

    def start(self) -> None:
        """Catch up on fires missed while stopped (if this scheduler leads), then fire on the
        wall clock, keeping the lead once taken."""
        self.leadership.start()
        self.catch_up(self._now())
        self._live.start()

    def shutdown(self) -> None:
        """Stop firing and give up the lead, so another scheduler takes over at its next fire."""
        self._live.shutdown()
        self.leadership.close()
