"""Market-data service: turns a panel (file replay or synthetic market) into BarSet events,
interleaved in time order with the schedule's RebalanceDue ticks.

The replay is the simulated-time driver: a bar becomes an event at its close, and a schedule
tick that falls at the same instant as a bar close comes after that bar, so the decision sees
it; a tick never sees a bar that closes after it. Ticks after the last bar are not replayed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import structlog
from apscheduler.triggers.base import BaseTrigger

from engine.bus import Bus
from engine.clock import SimulatedClock
from engine.data import Panel
from engine.data.quality import REASONS, bar_problems
from engine.events import BarSet, Control, RebalanceDue, make_event
from engine.scheduling import fire_times, rebalance_id
from engine.timeframes import utc_from_ms

log = structlog.get_logger("services.market_data")


def to_datetime(value: np.datetime64) -> datetime:
    """Return a numpy UTC time as an aware datetime."""
    return utc_from_ms(int(value.astype("datetime64[ms]").astype("int64")))


@dataclass(frozen=True)
class Step:
    """One thing the replay publishes: a bar (``bar_index``) or a schedule tick (``due``)."""

    time: datetime
    bar_index: int | None = None
    due: datetime | None = None
    decision_time: datetime | None = None


def replay_steps(panel: Panel, trigger: BaseTrigger | None) -> Iterator[Step]:
    """Yield bar closes and schedule ticks in time order (bar first on a tie)."""
    close_times = [to_datetime(t) for t in panel.close_time]
    if not close_times:
        return
    ticks = iter(fire_times(trigger, close_times[0] - timedelta(microseconds=1), close_times[-1])
                 if trigger is not None else ())
    tick = next(ticks, None)
    for index, close_time in enumerate(close_times):
        yield Step(time=close_time, bar_index=index)
        following = close_times[index + 1] if index + 1 < len(close_times) else None
        while tick is not None and (following is None or tick < following):
            yield Step(time=tick, due=tick, decision_time=close_time)
            tick = next(ticks, None)


class MarketDataService:
    """Publishes bars and schedule ticks from a panel; a producer, not a consumer."""

    name = "market-data"

    def __init__(self, bus: Bus, panel: Panel, trigger: BaseTrigger | None,
                 schedule_name: str, clock: SimulatedClock | None = None) -> None:
        self.bus = bus
        self.panel = panel
        self.trigger = trigger
        self.schedule_name = schedule_name
        self.clock = clock
        self.bars_published = 0
        self.ticks_published = 0
        self.rejected = 0
        self._problems: np.ndarray | None = None
        self._problem_rows = np.zeros(0, dtype=bool)
        self._now = lambda: datetime.now(timezone.utc)
        self._timeframe = panel.timeframe_label
        self._all_symbols = panel.symbols
        self._valid = ~np.isnan(panel.close)
        self._universes: dict[bytes, tuple[tuple[str, ...], object]] = {}
        self._bar_open = [to_datetime(t) for t in panel.bar_open]

    def _screen(self, index: int) -> np.ndarray:
        # Bars that fail the quality rules never reach the factors: dropped, logged, counted.
        if self._problems is None:  # the whole panel is checked at once, on first use
            panel = self.panel
            self._problems = bar_problems(panel.open, panel.high, panel.low, panel.close, panel.volume)
            self._problem_rows = (self._problems >= 0).any(axis=1)
        valid = self._valid[index]
        if self._bar_open[index] > self._now():
            reasons = dict.fromkeys(np.flatnonzero(valid).tolist(), "timestamp in the future")
        elif self._problem_rows[index]:
            reasons = {column: REASONS[problem]
                       for column, problem in enumerate(self._problems[index].tolist()) if problem >= 0}
        else:
            return valid
        for column, reason in reasons.items():
            log.warning("data.rejected", symbol=self._all_symbols[column],
                        timestamp=self._bar_open[index].isoformat(), reason=reason)
        self.rejected += len(reasons)
        bad = np.zeros_like(valid)
        bad[list(reasons)] = True
        return valid & ~bad

    def bar_set(self, index: int) -> BarSet | None:
        """Return the BarSet of bar ``index`` holding only symbols with a good bar then."""
        panel = self.panel
        valid = self._screen(index)
        key = valid.tobytes()
        cached = self._universes.get(key)
        if cached is None:
            if valid.all():
                cached = (self._all_symbols, slice(None))
            elif not valid.any():
                cached = ((), None)
            else:
                columns = np.flatnonzero(valid)
                cached = (tuple(self._all_symbols[i] for i in columns), columns)
            # One tuple object per universe, so consumers can compare universes by identity.
            self._universes[key] = cached
        symbols, columns = cached
        if columns is None:
            return None
        volume = None if panel.volume is None else tuple(panel.volume[index, columns].tolist())
        return BarSet(
            timeframe=self._timeframe,
            bar_open=self._bar_open[index],
            symbols=symbols,
            open=tuple(panel.open[index, columns].tolist()),
            high=tuple(panel.high[index, columns].tolist()),
            low=tuple(panel.low[index, columns].tolist()),
            close=tuple(panel.close[index, columns].tolist()),
            volume=volume,
        )

    def steps(self) -> Iterator[Step]:
        """Return the replay's steps, to be published one by one with ``publish``."""
        return replay_steps(self.panel, self.trigger)

    def publish(self, step: Step) -> None:
        """Publish one step at its simulated time."""
        if self.clock is not None:
            self.clock.advance_to(step.time)
        if step.bar_index is not None:
            bars = self.bar_set(step.bar_index)
            if bars is None:
                return
            corr = f"bar-{step.time:%Y%m%dT%H%M%SZ}"
            self.bus.publish(BarSet.TOPIC, make_event(bars, source=self.name, corr=corr, ts=step.time))
            self.bars_published += 1
            return
        assert step.due is not None and step.decision_time is not None
        identifier = rebalance_id(self.schedule_name, step.due)
        tick = RebalanceDue(rebalance_id=identifier, schedule=self.schedule_name, due=step.due,
                            decision_time=step.decision_time)
        self.bus.publish(RebalanceDue.TOPIC, make_event(tick, source=self.name, corr=identifier,
                                                        ts=step.time))
        self.ticks_published += 1
        log.info("schedule.fired", rebalance_id=identifier, due=step.due.isoformat(),
                 decision_time=step.decision_time.isoformat())

    def end_of_data(self, reason: str = "end of data") -> None:
        """Tell every service the replay is over: open orders are cancelled, trading halts."""
        now = self.clock.now() if self.clock else datetime.now(timezone.utc)
        self.bus.publish(Control.TOPIC, make_event(Control(command="halt", reason=reason),
                                                   source=self.name, corr="end-of-data", ts=now))
