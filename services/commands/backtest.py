"""``deepfactor backtest``: the daemons' services in one process, on the in-memory bus and a
simulated clock driven by the data. What was tested is what trades."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import structlog

from engine.bus import MemoryBus
from engine.clock import SimulatedClock
from engine.config import Config
from engine.data import Panel
from engine.progress import JobProgress
from services.commands.report_data import write_backtest_frames
from services.daemons.market_data import MarketDataService, to_datetime
from services.daemons.signal import CHECKPOINT_KINDS
from services.runtime.assembly import Services, build_services, schedule_trigger
from services.runtime.loop import Pump

log = structlog.get_logger("services.commands.backtest")
BLOCK_BARS = 1024


class Backtest:
    """One replay of a panel through every service; keeps the bus for auditing.

    ``block_bars`` caps how many quiet bars go out as one BarBlock; 1 sends every bar as its
    own BarSet (slower, same results: the tests compare the two). ``schedule`` serves models
    fitted elsewhere (``deepfactor evaluate`` fits the walk-forward windows in parallel) instead
    of fitting them here when ``[model] walk_forward`` is on.
    """

    def __init__(
        self,
        config: Config,
        panel: Panel,
        block_bars: int = BLOCK_BARS,
        schedule: list[tuple[Any, Any]] | None = None,
    ) -> None:
        if block_bars < 1:
            raise ValueError(f"block_bars must be >= 1, received {block_bars}")
        self.config = config
        self.panel = panel
        self.block_bars = block_bars
        self.bus = MemoryBus(namespace="backtest")
        self.clock = SimulatedClock(to_datetime(panel.bar_open[0]))
        self.services: Services = build_services(config, self.bus, self.clock)
        if schedule is not None:
            self.services.signal.serve_schedule(schedule)
        elif config.model.walk_forward and config.strategy.name in CHECKPOINT_KINDS:
            self.walk_forward = _walk_forward(config, panel)
            self.services.signal.serve_schedule(self.walk_forward.schedule[config.strategy.name])
        self.market = MarketDataService(
            self.bus, panel, schedule_trigger(config), config.schedule.name, self.clock
        )
        self.pump = Pump(self.services.all())

    def _quiet(self) -> bool:
        # No order in flight and no tick waiting: nothing a service does depends on how the
        # next bars interleave with other events, so they can be delivered as one block.
        return (
            not self.services.rebalance.open_orders
            and not self.services.rebalance.pending
            and not self.services.execution.broker.open_order_count
        )

    def run(self, out_dir: Path | None = None) -> dict[str, Any]:
        """Replay every bar and tick, then end the data; return (and write) the summary.

        Each schedule tick is delivered on its own, and so is each bar while something is in
        flight. Otherwise the bars up to the next tick (at most ``block_bars``) go out as one
        BarBlock, which the services handle with matrix operations instead of a step per bar.
        """
        started = time.perf_counter()
        market, pump = self.market, self.pump
        published = 0
        progress = JobProgress("backtest", self.panel.n_bars, "bar")
        for count, tick in [*market.ticks(), (self.panel.n_bars, None)]:
            while published < count:
                stop = published + 1
                if self._quiet():
                    stop = min(count, published + self.block_bars)
                    # Bars on which the drawdown stop may act go one by one: its orders must
                    # reach the broker before the next bar, as they do bar by bar.
                    if stop > published + 1 and self.services.rebalance.stop_possible(
                        self.panel.symbols, self.panel.close[published:stop]
                    ):
                        stop = published + 1
                market.publish_bars(published, stop)
                pump.pump()
                progress.update(stop - published)
                published = stop
            if tick is not None:
                market.publish(tick)
                pump.pump()
        progress.close()
        market.end_of_data()
        pump.pump()
        summary = self.services.recorder.summary(
            self.config.portfolio.initial_cash, self.panel.periods_per_year(), market.bars_published
        )
        summary["model"] = self.services.signal.last_model
        summary["signal_fallbacks"] = self.services.signal.fallbacks
        if out_dir is not None:
            self.services.recorder.write(out_dir, summary)
            # What `deepfactor report` draws beside the summary: the backtest keeps no event log.
            write_backtest_frames(out_dir, self.bus, self.panel, self.config)
        log.info(
            "backtest.done",
            bars=market.bars_published,
            rebalances=market.ticks_published,
            orders=summary["orders"],
            final_equity=round(summary["final_equity"], 2),
            seconds=round(time.perf_counter() - started, 3),
            pending=pump.pending(),
        )
        return summary


def _walk_forward(config: Config, panel: Panel):  # -> WalkForwardResult
    # Fit the configured model walk-forward on the same snapshots the run will publish.
    from services.commands.model_data import period_data
    from services.commands.train import settings_of
    from strategies.models.training import walk_forward

    started = time.perf_counter()
    kind = config.strategy.name
    result = walk_forward(period_data(config, panel), (kind,), settings_of(config))
    log.info(
        "backtest.walk_forward",
        model=kind,
        windows=len(result.windows),
        first_serves=str(result.schedule[kind][0][0])[:19],
        out_of_sample_ic=round(result.summary()[kind]["mean_ic"], 4),
        seconds=round(time.perf_counter() - started, 2),
    )
    return result


def run_backtest(config: Config, panel: Panel, out_dir: Path | None = None) -> dict[str, Any]:
    """Replay ``panel`` through every service and return (and write) the run's summary."""
    return Backtest(config, panel).run(out_dir)
