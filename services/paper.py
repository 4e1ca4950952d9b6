"""``deepfactor paper``: every service as a daemon loop over Redis, against the simulated broker.

Two feeds. A replay (the bundled sample, a file, or the synthetic market) steps one bar or
schedule tick at a time and waits until every consumer group has caught up with it, so a run at
any speed makes the same decisions as a backtest; ``--speed`` caps the pace in bars per second.
A live feed (``--exchange``) polls closed candles through ccxt on the wall clock, and an
APScheduler scheduler publishes the rebalance ticks. Stopping (SIGTERM, SIGINT, or the end of
the data) halts trading, lets the services drain, then stops each after it committed its batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import structlog

from engine.bus import RedisBus
from engine.bus.factory import consume_settings, open_redis_bus
from engine.clock import Clock, SimulatedClock, WallClock
from engine.config import Config
from engine.data import Panel
from engine.data.ccxt_source import CcxtOhlcvSource
from engine.events import Control, make_event
from engine.timeframes import timeframe_delta
from services.assembly import Services, build_services, schedule_trigger
from services.live_market_data import LiveMarketDataService
from services.market_data import MarketDataService, to_datetime
from services.quiescence import RedisQuiescence
from services.runtime import ServiceRunner
from services.scheduler import SchedulerService

log = structlog.get_logger("services.paper")


@dataclass
class PaperRun:
    """What a finished paper run leaves behind: where its events live, and its figures."""

    namespace: str
    redis_url: str
    out_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    pending_at_exit: int = 0
    interrupted: bool = False


@dataclass
class _Daemons:
    bus: RedisBus
    services: Services
    runners: list[ServiceRunner]
    quiet: RedisQuiescence
    run: PaperRun


@contextmanager
def _daemons(
    config: Config, out_dir: Path, clock: Clock, drain_timeout_s: float
) -> Iterator[_Daemons]:
    # A fresh namespace per run: a paper run's streams and groups start empty.
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    namespace = f"{config.run.namespace}-{run_id}"
    config = msgspec.structs.replace(
        config, run=msgspec.structs.replace(config.run, namespace=namespace)
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    stop_services = threading.Event()
    with open_redis_bus(config, run_dir=out_dir) as bus:
        services = build_services(config, bus, clock)
        runners = [
            ServiceRunner(
                s, consume_settings(config), config.paper.heartbeat_s, config.run.instance
            )
            for s in services.all()
        ]
        threads = [
            threading.Thread(target=r.run, args=(stop_services,), name=r.service.name, daemon=True)
            for r in runners
        ]
        for thread in threads:
            thread.start()
        daemons = _Daemons(
            bus,
            services,
            runners,
            RedisQuiescence(bus, [(s.name, s.topics) for s in services.all()]),
            PaperRun(namespace=namespace, redis_url=bus.url, out_dir=out_dir),
        )
        try:
            yield daemons
        finally:
            stop_services.set()
            for thread in threads:
                thread.join(timeout=drain_timeout_s)
        daemons.run.pending_at_exit = sum(r.loop.consumer.pending_count() for r in runners)


def _finish(daemons: _Daemons, config: Config, periods_per_year: float, bars: int) -> PaperRun:
    run = daemons.run
    run.summary = daemons.services.recorder.summary(
        config.portfolio.initial_cash, periods_per_year, bars
    )
    daemons.services.recorder.write(run.out_dir, run.summary)
    return run


def run_paper(
    config: Config,
    panel: Panel,
    out_dir: Path,
    *,
    speed: float,
    stop: threading.Event | None = None,
    drain_timeout_s: float = 30.0,
) -> PaperRun:
    """Replay ``panel`` through the services over Redis; ``speed`` in bars/s, 0 = no cap."""
    stop = stop or threading.Event()
    clock = SimulatedClock(to_datetime(panel.bar_open[0]))
    with _daemons(config, out_dir, clock, drain_timeout_s) as daemons:
        market = MarketDataService(
            daemons.bus, panel, schedule_trigger(config), config.schedule.name, clock
        )
        run = daemons.run
        log.info(
            "paper.started",
            namespace=run.namespace,
            redis=run.redis_url,
            feed="replay",
            bars=panel.n_bars,
            symbols=len(panel.symbols),
            speed=speed or "max",
            out=str(out_dir),
        )
        interval = 1.0 / speed if speed > 0 else 0.0
        next_bar_at = time.monotonic()
        for step in market.steps():
            if stop.is_set():
                run.interrupted = True
                break
            if step.bar_index is not None and interval:
                stop.wait(max(0.0, next_bar_at - time.monotonic()))
                next_bar_at = max(next_bar_at + interval, time.monotonic())
            market.publish(step)
            daemons.quiet.wait(timeout_s=drain_timeout_s)
        market.end_of_data("stopped" if run.interrupted else "end of data")
        if not daemons.quiet.wait(timeout_s=drain_timeout_s):
            log.warning("paper.drain_timeout", timeout_s=drain_timeout_s)
    _finish(daemons, config, panel.periods_per_year(), market.bars_published)
    log.info(
        "paper.done",
        namespace=run.namespace,
        bars=market.bars_published,
        rebalances=market.ticks_published,
        orders=run.summary["orders"],
        final_equity=round(run.summary["final_equity"], 2),
        pending=run.pending_at_exit,
        interrupted=run.interrupted,
    )
    return run


def run_live_paper(
    config: Config,
    source: CcxtOhlcvSource,
    out_dir: Path,
    *,
    warmup_bars: int,
    stop: threading.Event,
    poll_interval_s: float | None = None,
    drain_timeout_s: float = 30.0,
) -> PaperRun:
    """Paper-trade on live ccxt candles until ``stop`` is set; rebalances on the wall clock."""
    step = timeframe_delta(source.timeframe)
    since_ms = int((time.time() - warmup_bars * step.total_seconds()) * 1000)
    poll = poll_interval_s or min(15.0, max(1.0, step.total_seconds() / 4))
    with _daemons(config, out_dir, WallClock(), drain_timeout_s) as daemons:
        market = LiveMarketDataService(daemons.bus, source, since_ms)
        scheduler = SchedulerService(
            daemons.bus, schedule_trigger(config), config.schedule.name, source.timeframe
        )
        run = daemons.run
        log.info(
            "paper.started",
            namespace=run.namespace,
            redis=run.redis_url,
            feed="live",
            exchange=source.exchange_id,
            symbols=list(source.symbols),
            timeframe=source.timeframe,
            warmup_bars=warmup_bars,
            out=str(out_dir),
        )
        scheduler.start()
        try:
            market.run(stop, poll)
        finally:
            scheduler.shutdown()
        run.interrupted = True
        daemons.bus.publish(
            Control.TOPIC,
            make_event(
                Control(command="halt", reason="stopped"), source=market.name, corr="end-of-data"
            ),
        )
        if not daemons.quiet.wait(timeout_s=drain_timeout_s):
            log.warning("paper.drain_timeout", timeout_s=drain_timeout_s)
    periods_per_year = 365 * 86_400 / step.total_seconds()  # crypto trades every day
    _finish(daemons, config, periods_per_year, market.bars_published)
    log.info(
        "paper.done",
        namespace=run.namespace,
        bars=market.bars_published,
        orders=run.summary["orders"],
        final_equity=round(run.summary["final_equity"], 2),
        pending=run.pending_at_exit,
    )
    return run
