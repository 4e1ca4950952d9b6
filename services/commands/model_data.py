"""The models' training data, made by the services that feed them live.

The factor-update service runs over a panel on the in-memory bus, exactly as in a backtest
or a paper run, and every FactorSnapshot it publishes is kept; the closes at each snapshot's
time give the labels. So a model is trained on the numbers it will be served.
"""

from __future__ import annotations

import numpy as np

from engine.bus import MemoryBus
from engine.clock import SimulatedClock
from engine.config import Config
from engine.data import Panel
from engine.data.fill import carry_forward
from engine.errors import DataError
from engine.events import Envelope, EventPayload, FactorSnapshot
from services.commands.backtest import BLOCK_BARS
from services.daemons.factor_update import FactorUpdateService
from services.daemons.market_data import MarketDataService, to_datetime
from services.runtime.assembly import schedule_trigger
from services.runtime.loop import Handler, Pump, Service
from strategies.models.dataset import PeriodData, build_period_data, utc64


class _SnapshotCollector(Service):
    """Keeps every FactorSnapshot published."""

    name = "model-data"

    def __init__(self, bus: MemoryBus, clock: SimulatedClock) -> None:
        self.snapshots: list[FactorSnapshot] = []
        super().__init__(bus, clock)

    def handlers(self) -> dict[type[EventPayload], Handler]:
        return {FactorSnapshot: self.on_factors}

    def on_factors(self, event: Envelope) -> None:
        snapshot = event.payload
        assert isinstance(snapshot, FactorSnapshot)
        if snapshot.symbols:
            self.snapshots.append(snapshot)


def collect_snapshots(config: Config, panel: Panel) -> list[FactorSnapshot]:
    """Every FactorSnapshot the factor service of ``config`` publishes over ``panel``."""
    bus = MemoryBus(namespace="model-data")
    clock = SimulatedClock(to_datetime(panel.bar_open[0]))
    factors = FactorUpdateService(bus, clock, config.strategy)
    collector = _SnapshotCollector(bus, clock)
    market = MarketDataService(bus, panel, schedule_trigger(config), config.schedule.name, clock)
    pump = Pump([factors, collector])
    published = 0
    for count, tick in [*market.ticks(), (panel.n_bars, None)]:
        while published < count:
            stop = min(count, published + BLOCK_BARS)
            market.publish_bars(published, stop)
            pump.pump()
            published = stop
        if tick is not None:
            market.publish(tick)
            pump.pump()
    return collector.snapshots


def period_data(config: Config, panel: Panel) -> PeriodData:
    """The training data of ``config``'s factors over ``panel`` (``collect_snapshots``), with
    each asset's close at every snapshot's time (the last known close) for the labels.

    Raises
    ------
    DataError
        Too few snapshots to learn from.
    """
    snapshots = collect_snapshots(config, panel)
    if len(snapshots) < 3:
        raise DataError(
            f"{panel.source}: the factor service published {len(snapshots)} snapshots over "
            f"{panel.n_bars} bars; training needs many more (more bars, or [strategy] "
            "compute_on = 'bar')"
        )
    close_times = panel.close_time
    asof = np.array([utc64(s.asof) for s in snapshots])
    rows = np.searchsorted(close_times.astype("datetime64[ns]"), asof, side="right") - 1
    closes = carry_forward(panel.close, np.full(len(panel.symbols), np.nan))[rows]
    return build_period_data(snapshots, panel.symbols, closes)
