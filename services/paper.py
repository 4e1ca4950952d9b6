"""``deepfactor paper``: every service as a daemon loop over Redis, fed by a replayed or
synthetic market at a chosen pace, against the simulated broker.

The replay advances one step (a bar, or a schedule tick) only once every consumer group has
caught up with the last one, so a run at any speed makes the same decisions as a backtest;
``--speed`` caps the pace in bars per second. Stopping (SIGTERM, SIGINT, or the last bar)
ends the data, lets the services drain, then stops each one after it committed its batch.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec
import structlog

from engine.bus.factory import consume_settings, open_redis_bus
from engine.clock import SimulatedClock
from engine.config import Config
from engine.data import Panel
from services.assembly import build_services, schedule_trigger
from services.market_data import MarketDataService, to_datetime
from services.quiescence import RedisQuiescence
from services.runtime import ServiceRunner

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


def run_paper(config: Config, panel: Panel, out_dir: Path, *, speed: float,
              stop: threading.Event | None = None, drain_timeout_s: float = 30.0) -> PaperRun:
    """Run ``panel`` through the services over Redis; ``speed`` in bars/s, 0 = no cap."""
    stop = stop or threading.Event()
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    namespace = f"{config.run.namespace}-{run_id}"
    config = msgspec.structs.replace(config, run=msgspec.structs.replace(config.run, namespace=namespace))
    out_dir.mkdir(parents=True, exist_ok=True)
    services_stop = threading.Event()
    with open_redis_bus(config, run_dir=out_dir, stop=None) as bus:
        run = PaperRun(namespace=namespace, redis_url=bus.url, out_dir=out_dir)
        clock = SimulatedClock(to_datetime(panel.bar_open[0]))
        services = build_services(config, bus, clock)
        runners = [ServiceRunner(s, consume_settings(config), config.paper.heartbeat_s)
                   for s in services.all()]
        threads = [threading.Thread(target=r.run, args=(services_stop,), name=r.service.name,
                                    daemon=True) for r in runners]
        for thread in threads:
            thread.start()
        market = MarketDataService(bus, panel, schedule_trigger(config), config.schedule.name, clock)
        quiet = RedisQuiescence(bus, [(s.name, s.topics) for s in services.all()])
        log.info("paper.started", namespace=namespace, redis=bus.url, bars=panel.n_bars,
                 symbols=len(panel.symbols), speed=speed or "max", out=str(out_dir))
        interval = 1.0 / speed if speed > 0 else 0.0
        next_bar_at = time.monotonic()
        try:
            for step in market.steps():
                if stop.is_set():
                    run.interrupted = True
                    break
                if step.bar_index is not None and interval:
                    stop.wait(max(0.0, next_bar_at - time.monotonic()))
                    next_bar_at = max(next_bar_at + interval, time.monotonic())
                market.publish(step)
                quiet.wait(timeout_s=drain_timeout_s)
            market.end_of_data("stopped" if run.interrupted else "end of data")
            if not quiet.wait(timeout_s=drain_timeout_s):
                log.warning("paper.drain_timeout", timeout_s=drain_timeout_s)
        finally:
            services_stop.set()
            for thread in threads:
                thread.join(timeout=drain_timeout_s)
        run.pending_at_exit = sum(r.loop.consumer.pending_count() for r in runners)
        run.summary = services.recorder.summary(config.portfolio.initial_cash,
                                                panel.periods_per_year(), market.bars_published)
        services.recorder.write(out_dir, run.summary)
        log.info("paper.done", namespace=namespace, bars=market.bars_published,
                 rebalances=market.ticks_published, orders=run.summary["orders"],
                 final_equity=round(run.summary["final_equity"], 2),
                 pending=run.pending_at_exit, interrupted=run.interrupted)
    return run
