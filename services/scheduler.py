"""Scheduler service for wall-clock runs: APScheduler fires the configured trigger and each
fire becomes a RebalanceDue on the bus.

The decision time is the close of the last bar that has closed by the fire time, computed from
the bar timeframe, so the rebalancer decides on that bar even if its signal arrives later.
Replays and backtests do not use this: there the market-data replay asks the same trigger for
its fire times in simulated time.
"""

from __future__ import annotations

from datetime import UTC, datetime

import structlog
from apscheduler.triggers.base import BaseTrigger

from engine.bus import Bus
from engine.events import RebalanceDue, make_event
from engine.scheduling import LiveScheduler, rebalance_id
from engine.timeframes import timeframe_delta, utc_from_ms

log = structlog.get_logger("services.scheduler")


def last_close_at_or_before(when: datetime, timeframe: str) -> datetime:
    """Return the latest bar close time not after ``when`` for bars aligned to the epoch."""
    step = timeframe_delta(timeframe)
    epoch = utc_from_ms(0)
    return epoch + ((when - epoch) // step) * step


class SchedulerService:
    """Publishes RebalanceDue at the trigger's wall-clock fire times."""

    name = "scheduler"

    def __init__(self, bus: Bus, trigger: BaseTrigger, schedule_name: str, timeframe: str) -> None:
        self.bus = bus
        self.schedule_name = schedule_name
        self.timeframe = timeframe
        self.fired = 0
        self._live = LiveScheduler(trigger, self.fire)

    def fire(self, now: datetime) -> RebalanceDue:
        """Publish the tick of a fire at ``now`` (seconds precision) and return it."""
        due = now.astimezone(UTC).replace(microsecond=0)
        identifier = rebalance_id(self.schedule_name, due)
        tick = RebalanceDue(
            rebalance_id=identifier,
            schedule=self.schedule_name,
            due=due,
            decision_time=last_close_at_or_before(due, self.timeframe),
        )
        self.bus.publish(
            RebalanceDue.TOPIC, make_event(tick, source=self.name, corr=identifier, ts=due)
        )
        self.fired += 1
        log.info(
            "schedule.fired",
            rebalance_id=identifier,
            due=due.isoformat(),
            decision_time=tick.decision_time.isoformat(),
        )
        return tick

    def start(self) -> None:
        self._live.start()

    def shutdown(self) -> None:
        self._live.shutdown()
