"""Market-data service: turns a panel (file replay or synthetic market) into BarSet events,
interleaved in time order with the schedule's RebalanceDue ticks.

The replay is the simulated-time driver: a bar becomes an event at its close, and a schedule
tick that falls at the same instant as a bar close comes after that bar, so the decision sees
it; a tick never sees a bar that closes after it. Ticks after the last bar are not replayed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import structlog
from apscheduler.triggers.base import BaseTrigger

from engine.bus import Bus
from engine.clock import SimulatedClock
from engine.data import Panel
from engine.data.quality import REASONS, bar_problems
from engine.events import BarBlock, BarSet, Control, RebalanceDue, make_event
from engine.scheduling import fire_times, rebalance_id
from engine.timeframes import utc_from_ms

log = structlog.get_logger("services.daemons.market_data")


def to_datetime(value: np.datetime64) -> datetime:
    """Return a numpy UTC time as an aware datetime."""
    return utc_from_ms(int(value.astype("datetime64[ms]").astype("int64")))


def to_datetimes(values: np.ndarray) -> list[datetime]:
    """Return numpy UTC times as aware datetimes (one conversion for the whole array)."""
    return [t.replace(tzinfo=UTC) for t in values.astype("datetime64[us]").tolist()]


@dataclass(frozen=True)
class Step:
    """One thing the replay publishes: a bar (``bar_index``) or a schedule tick (``due``)."""

    time: datetime
    bar_index: int | None = None
    due: datetime | None = None
    decision_time: datetime | None = None


def schedule_ticks(panel: Panel, trigger: BaseTrigger | None) -> list[tuple[int, Step]]:
    """Return each schedule tick within the panel's span, after how many bars it comes.

    A tick comes after every bar that closes at or before it (bar first on a tie) and decides
    on the last of them; ticks after the last bar's close are not replayed.
    """
    if trigger is None or panel.n_bars == 0:
        return []
    close_us = panel.close_time.astype("datetime64[us]").astype(np.int64)
    first = to_datetime(panel.close_time[0])
    ticks = list(
        fire_times(trigger, first - timedelta(microseconds=1), to_datetime(panel.close_time[-1]))
    )
    if not ticks:
        return []
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    tick_us = np.array([(t - epoch) // timedelta(microseconds=1) for t in ticks], dtype=np.int64)
    counts = np.searchsorted(close_us, tick_us, side="right").tolist()
    return [
        (count, Step(time=tick, due=tick, decision_time=to_datetime(panel.close_time[count - 1])))
        for count, tick in zip(counts, ticks)
    ]


def replay_steps(panel: Panel, trigger: BaseTrigger | None) -> Iterator[Step]:
    """Yield bar closes and schedule ticks in time order (bar first on a tie)."""
    close_times = to_datetimes(panel.close_time)
    published = 0
    for count, tick in [*schedule_ticks(panel, trigger), (len(close_times), None)]:
        for index in range(published, count):
            yield Step(time=close_times[index], bar_index=index)
        published = count
        if tick is not None:
            yield tick


class MarketDataService:
    """Publishes bars and schedule ticks from a panel; a producer, not a consumer."""

    name = "market-data"

    def __init__(
        self,
        bus: Bus,
        panel: Panel,
        trigger: BaseTrigger | None,
        schedule_name: str,
        clock: SimulatedClock | None = None,
    ) -> None:
        self.bus = bus
        self.panel = panel
        self.trigger = trigger
        self.schedule_name = schedule_name
        self.clock = clock
        self.bars_published = 0
        self.ticks_published = 0
        self.rejected = 0
        self._logged_not_closed = False
        self._problems: np.ndarray | None = None
        self._problem_rows = np.zeros(0, dtype=bool)
        self._now = lambda: datetime.now(UTC)
        self._timeframe = panel.timeframe_label
        self._all_symbols = panel.symbols
        self._valid = ~np.isnan(panel.close)
        self._universes: dict[bytes, tuple[tuple[str, ...], object]] = {}
        self._block_universes: dict[bytes, tuple[tuple[str, ...], np.ndarray]] = {}
        self._bar_open = to_datetimes(panel.bar_open)
        self._bar_delta = panel.timeframe.astype("timedelta64[us]").item()

    def _check_panel(self) -> np.ndarray:
        # The whole panel is checked against the quality rules at once, on first use.
        if self._problems is None:
            panel = self.panel
            self._problems = bar_problems(
                panel.open, panel.high, panel.low, panel.close, panel.volume
            )
            self._problem_rows = (self._problems >= 0).any(axis=1)
        return self._problems

    def _screen(self, index: int) -> np.ndarray:
        # Bars that fail the quality rules never reach the factors: dropped, logged, counted.
        problems = self._check_panel()
        valid = self._valid[index]
        if self._bar_open[index] + self._bar_delta > self._now():  # a bar exists once closed
            # Every later bar is open too: one line for the first, not one per symbol and bar
            # (a replay running past today would otherwise log millions).
            dropped = int(valid.sum())
            if not self._logged_not_closed and dropped:
                self._logged_not_closed = True
                log.warning(
                    "data.not_closed",
                    bar_time=self._bar_open[index].isoformat().replace("+00:00", "Z"),
                    symbols=dropped,
                    now=self._now().isoformat().replace("+00:00", "Z"),
                )
            self.rejected += dropped
            return np.zeros_like(valid)
        if self._problem_rows[index]:
            reasons = {
                column: REASONS[problem]
                for column, problem in enumerate(problems[index].tolist())
                if problem >= 0
            }
        else:
            return valid
        for column, reason in reasons.items():
            log.warning(
                "data.rejected",
                symbol=self._all_symbols[column],
                bar_time=self._bar_open[index].isoformat().replace("+00:00", "Z"),
                reason=reason,
            )
        self.rejected += len(reasons)
        bad = np.zeros_like(valid)
        bad[list(reasons)] = True
        return valid & ~bad

    def _screen_rows(self, start: int, stop: int) -> np.ndarray:
        # _screen for a run of rows: only rows with a problem or not yet closed go one by one
        # (they are logged); the rest are the panel's own presence mask.
        self._check_panel()
        valid = self._valid[start:stop].copy()
        now = np.datetime64(self._now().replace(tzinfo=None), "us")
        closes = self.panel.bar_open[start:stop] + self.panel.timeframe
        special = self._problem_rows[start:stop] | (closes > now)
        for offset in np.flatnonzero(special).tolist():
            valid[offset] = self._screen(start + offset)
        return valid

    def bar_block(self, start: int, stop: int) -> BarBlock | None:
        """Return bars ``start`` to ``stop - 1`` as one BarBlock, screened like ``bar_set``:
        a rejected or missing bar is NaN; symbols with no good bar in the run are left out."""
        panel = self.panel
        valid = self._screen_rows(start, stop)
        present = valid.any(axis=0)
        key = present.tobytes()
        cached = self._block_universes.get(key)
        if cached is None:
            columns = np.flatnonzero(present)
            cached = (tuple(self._all_symbols[i] for i in columns), columns)
            self._block_universes[key] = cached
        symbols, columns = cached
        if not symbols:
            return None
        mask = valid[:, columns]
        rows = slice(start, stop)
        if len(columns) == len(self._all_symbols):
            columns = slice(None)  # every symbol: a view, not a gather

        def cells(values: np.ndarray) -> np.ndarray:
            return np.where(mask, values[rows, columns], np.nan)

        shared: dict[int, np.ndarray] = {}  # close-only panels: one array for four columns
        matrices: dict[str, np.ndarray | None] = {"volume": None}
        for name in ("open", "high", "low", "close", "volume"):
            values = getattr(panel, name)
            if values is not None:
                if id(values) not in shared:
                    shared[id(values)] = cells(values)
                matrices[name] = shared[id(values)]
        self.bars_published += int(mask.any(axis=1).sum())
        return BarBlock.from_matrices(
            timeframe=self._timeframe,
            bar_open=tuple(self._bar_open[start:stop]),
            symbols=symbols,
            **matrices,
        )

    def publish_bars(self, start: int, stop: int) -> None:
        """Publish bars ``start`` to ``stop - 1`` at the last one's close: one BarSet for one
        bar, else one BarBlock.

        The caller guarantees nothing else happens between these bars (no schedule tick, no
        order in flight), which is what makes delivering them together equivalent.
        """
        close_time = self._bar_open[stop - 1] + self._bar_delta
        if stop - start == 1:
            self.publish(Step(time=close_time, bar_index=start))
            return
        if self.clock is not None:
            self.clock.advance_to(close_time)
        block = self.bar_block(start, stop)
        if block is None:
            return
        first = self._bar_open[start] + self._bar_delta
        corr = f"bars-{first:%Y%m%dT%H%M%SZ}-{close_time:%Y%m%dT%H%M%SZ}"
        self.bus.publish(
            BarBlock.TOPIC, make_event(block, source=self.name, corr=corr, ts=close_time)
        )

    def has_bars(self, index: int) -> bool:
        """Whether bar time ``index`` has any symbol's bar (an empty one publishes nothing)."""
        return bool(self._valid[index].any())

    def ticks(self) -> list[tuple[int, Step]]:
        """Return the schedule's ticks with how many bars precede each (see schedule_ticks)."""
        return schedule_ticks(self.panel, self.trigger)

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
            self.bus.publish(
                BarSet.TOPIC, make_event(bars, source=self.name, corr=corr, ts=step.time)
            )
            self.bars_published += 1
            return
        assert step.due is not None and step.decision_time is not None
        identifier = rebalance_id(self.schedule_name, step.due)
        tick = RebalanceDue(
            rebalance_id=identifier,
            schedule=self.schedule_name,
            due=step.due,
            decision_time=step.decision_time,
        )
        self.bus.publish(
            RebalanceDue.TOPIC, make_event(tick, source=self.name, corr=identifier, ts=step.time)
        )
        self.ticks_published += 1
        log.info(
            "schedule.fired",
            rebalance_id=identifier,
            due=step.due.isoformat(),
            decision_time=step.decision_time.isoformat(),
        )

    def end_of_data(self, reason: str = "end of data") -> None:
        """Tell every service the replay is over: open orders are cancelled, trading halts."""
        now = self.clock.now() if self.clock else datetime.now(UTC)
        self.bus.publish(
            Control.TOPIC,
            make_event(
                Control(command="halt", reason=reason), source=self.name, corr="end-of-data", ts=now
            ),
        )
