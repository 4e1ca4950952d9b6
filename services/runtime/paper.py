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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from engine.bus import RedisBus
from engine.bus.factory import consume_settings, open_redis_bus
from engine.bus.redis_streams import RedisDataLostError
from engine.clock import Clock, SimulatedClock, WallClock
from engine.config import Config
from engine.data import Panel
from engine.errors import BusError
from engine.events import BarSet, Control, RebalanceDue, make_event
from engine.portfolio.lots import TICK_SIZE, LotRules, lot_rules_from_ccxt
from engine.progress import JobProgress
from engine.timeframes import timeframe_delta
from services.daemons.live_market_data import LiveMarketDataService
from services.daemons.market_data import MarketDataService, Step, to_datetime
from services.daemons.scheduler import SchedulerService
from services.runtime.account import PaperAccount, bind_account, delete_namespace, open_account
from services.runtime.assembly import Services, build_services, schedule_trigger, trading_venue
from services.runtime.loop import ServiceRunner
from services.runtime.metrics import ProcessMetrics, serve_metrics
from services.runtime.quiescence import RedisQuiescence

if TYPE_CHECKING:  # ccxt and pandas load only in a process that polls an exchange
    from engine.data.ccxt_source import CcxtOhlcvSource

log = structlog.get_logger("services.runtime.paper")


@dataclass
class PaperRun:
    """What a finished paper run leaves behind: where its events live, and its figures."""

    namespace: str
    redis_url: str
    out_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    pending_at_exit: int = 0
    interrupted: bool = False
    restarts: int = 0


@dataclass
class _Daemons:
    bus: RedisBus
    services: Services
    runners: list[ServiceRunner]
    quiet: RedisQuiescence
    run: PaperRun


def _serve(runner: ServiceRunner, stop: threading.Event) -> None:
    # A service thread's loop; the bus failing under it (the data lost, the server gone) ends
    # the thread with one line: the run's main thread finds the same fault and reports it.
    try:
        runner.run(stop)
    except BusError as error:
        log.error("service.halted", service=runner.service.name, error=str(error))


@contextmanager
def _daemons(
    config: Config,
    out_dir: Path,
    clock: Clock,
    drain_timeout_s: float,
    account: PaperAccount,
    stop: threading.Event | None = None,
    live: bool = False,
    market_rules: dict[str, LotRules] | None = None,
) -> Iterator[_Daemons]:
    # The account's namespace: a resumed account finds its streams, groups and state there.
    namespace = account.namespace
    config = msgspec.structs.replace(
        config, run=msgspec.structs.replace(config.run, namespace=namespace)
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    stop_services = threading.Event()
    # ``stop`` (the run's signal) also cuts short any wait for an unreachable Redis.
    with open_redis_bus(config, run_dir=out_dir, stop=stop) as bus:
        if account.retired_namespace:
            delete_namespace(bus, account.retired_namespace)
        # Mark (or check) the account in Redis: its data gone halts the run loudly.
        bind_account(bus, account, out_dir)
        venue = trading_venue(config, live=live, market_rules=market_rules)
        services = build_services(config, bus, clock, *venue)
        # [metrics] enabled: one endpoint for the process, each service under its own label.
        families = ProcessMetrics() if config.metrics.enabled else None
        runners = [
            ServiceRunner(
                s,
                consume_settings(config),
                config.paper.heartbeat_s,
                config.run.instance,
                metrics=families.service(s.name, config.run.instance) if families else None,
            )
            for s in services.all()
        ]
        # The run directory's event log (events.jsonl): its own group on every topic, in
        # the replay's quiescence like the others. A resumed account continues the file.
        from services.daemons.archive import EVENT_LOG, ArchiveService, archive_topics

        archive = ArchiveService(
            bus,
            clock,
            out_dir / EVENT_LOG,
            archive_topics(services.all()),
            new_log=not account.resumed,
        )
        runners.append(
            ServiceRunner(
                archive,
                consume_settings(config),
                config.paper.heartbeat_s,
                config.run.instance,
                metrics=families.service(archive.name, config.run.instance) if families else None,
            )
        )
        threads = [
            threading.Thread(
                target=_serve, args=(r, stop_services), name=r.service.name, daemon=True
            )
            for r in runners
        ]
        for thread in threads:
            thread.start()
        daemons = _Daemons(
            bus,
            services,
            runners,
            RedisQuiescence(bus, [(r.service.name, r.service.topics) for r in runners]),
            PaperRun(
                namespace=namespace,
                redis_url=bus.url,
                out_dir=out_dir,
                restarts=account.restarts,
            ),
        )
        if account.resumed:
            # A halt left pending by the killed run must not stop the continued one.
            bus.publish(
                Control.TOPIC,
                make_event(
                    Control(command="resume", reason="paper account resumed"),
                    source="paper",
                    corr="resume",
                ),
            )
        try:
            with serve_metrics(config.metrics, "paper", families):
                yield daemons
        finally:
            stop_services.set()
            for thread in threads:
                thread.join(timeout=drain_timeout_s)
        daemons.run.pending_at_exit = sum(r.loop.consumer.pending_count() for r in runners)


def _skip_seen_steps(
    market: MarketDataService, steps: Iterator[Step], bus: RedisBus
) -> Iterator[Step]:
    """Yield the replay's steps the account has not seen yet.

    The bars and schedule streams say where a killed run got to: its last bar and its last
    tick. Steps up to them are skipped (the clock still moves through them), so the continued
    run publishes exactly what the uninterrupted one would have published next.
    """
    last_bar = bus.last_event(BarSet.TOPIC)
    last_tick = bus.last_event(RebalanceDue.TOPIC)
    seen_bars_until = last_bar.ts if last_bar is not None else None
    seen_ticks_until = last_tick.payload.due if last_tick is not None else None
    if seen_bars_until is None and seen_ticks_until is None:
        yield from steps
        return
    skipped = 0
    for step in steps:
        if step.bar_index is not None:
            seen = seen_bars_until is not None and step.time <= seen_bars_until
        else:
            seen = seen_ticks_until is not None and step.due <= seen_ticks_until
        if not seen:
            if skipped:
                log.info("paper.feed_continued", skipped_steps=skipped, at=step.time.isoformat())
                skipped = 0
            yield step
            continue
        skipped += 1
        if market.clock is not None:
            market.clock.advance_to(step.time)
        if step.bar_index is not None and market.has_bars(step.bar_index):
            market.bars_published += 1  # the account's bars in all, as --bars counts them
        elif step.bar_index is None:
            market.ticks_published += 1
    if skipped:
        log.info("paper.feed_continued", skipped_steps=skipped, at="end of data")


def feed_replay(
    market: MarketDataService,
    bus: RedisBus,
    caught_up: Callable[[], object],
    *,
    speed: float,
    stop: threading.Event,
) -> bool:
    """Publish the replay's steps the account has not seen yet, one at a time, each followed by
    ``caught_up()`` (the wait until every consumer group handled it), then the end-of-data
    halt; ``speed`` caps the pace in bars/s (0: no cap). Return whether ``stop`` ended the
    replay early (the halt then says "stopped").

    The feed of ``deepfactor paper`` and of ``deepfactor run market-data``.
    """
    interrupted = False
    interval = 1.0 / speed if speed > 0 else 0.0
    # A continued account first finishes what its killed run left in flight (the pending
    # messages each group reads first), so the next step meets the state it would have met.
    caught_up()
    next_bar_at = time.monotonic()
    # Logs only (a daemon's, or a terminal shared with the run's own output).
    progress = JobProgress("replay", market.panel.n_bars, "bar", bar=False)
    for step in _skip_seen_steps(market, market.steps(), bus):
        if stop.is_set():
            interrupted = True
            break
        if step.bar_index is not None and interval:
            stop.wait(max(0.0, next_bar_at - time.monotonic()))
            next_bar_at = max(next_bar_at + interval, time.monotonic())
        market.publish(step)
        caught_up()
        if step.bar_index is not None:  # bars done so far, those of a killed run included
            progress.update(step.bar_index + 1 - progress.done)
    market.end_of_data("stopped" if interrupted else "end of data")
    return interrupted


def _finish(
    daemons: _Daemons,
    config: Config,
    periods_per_year: float,
    bars: int,
    stopped_reason: str | None = None,
) -> PaperRun:
    run = daemons.run
    run.summary = daemons.services.recorder.summary(
        config.portfolio.initial_cash, periods_per_year, bars
    )
    run.summary["model"] = daemons.services.signal.last_model
    run.summary["signal_fallbacks"] = daemons.services.signal.fallbacks
    run.summary["restarts"] = run.restarts
    if stopped_reason is not None:
        run.summary["stopped_reason"] = stopped_reason
    daemons.services.recorder.write(run.out_dir, run.summary)
    return run


def _halt_on_data_lost(
    daemons: _Daemons | None,
    error: RedisDataLostError,
    config: Config,
    periods_per_year: float,
    bars: int,
) -> None:
    """The Redis data was lost mid-run: the services are stopped; write the summary of what
    the run saw, with its ``stopped_reason``, and log the error (the caller re-raises)."""
    reason = f"redis data lost: {error}"
    if daemons is not None:
        _finish(daemons, config, periods_per_year, bars, stopped_reason=reason)
    log.error(
        "paper.redis_data_lost", namespace=daemons and daemons.run.namespace, error=str(error)
    )


def replay_feed(panel: Panel) -> str:
    """How a replayed account names its feed in ``account.json``."""
    return f"replay:{panel.source}"


def _replay(
    daemons: _Daemons,
    market: MarketDataService,
    panel: Panel,
    config: Config,
    out_dir: Path,
    speed: float,
    stop: threading.Event,
    drain_timeout_s: float,
) -> None:
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

    def caught_up() -> bool:
        daemons.bus.check_data()  # each step: the account's data must still be there
        return daemons.quiet.wait(timeout_s=drain_timeout_s)

    run.interrupted = feed_replay(market, daemons.bus, caught_up, speed=speed, stop=stop)
    if not daemons.quiet.wait(timeout_s=drain_timeout_s):
        log.warning("paper.drain_timeout", timeout_s=drain_timeout_s)


def run_paper(
    config: Config,
    panel: Panel,
    out_dir: Path,
    *,
    speed: float,
    stop: threading.Event | None = None,
    drain_timeout_s: float = 30.0,
    account: PaperAccount | None = None,
) -> PaperRun:
    """Replay ``panel`` through the services over Redis; ``speed`` in bars/s, 0 = no cap.

    ``account`` is the paper account to trade (default: the one in ``out_dir``, opened there
    if there is none); a continued account's feed resumes after the last step it saw.
    """
    stop = stop or threading.Event()
    account = account or open_account(out_dir, config.run.namespace, replay_feed(panel))
    clock = SimulatedClock(to_datetime(panel.bar_open[0]))
    daemons: _Daemons | None = None
    market: MarketDataService | None = None
    try:
        with _daemons(config, out_dir, clock, drain_timeout_s, account, stop) as daemons:
            market = MarketDataService(
                daemons.bus, panel, schedule_trigger(config), config.schedule.name, clock
            )
            _replay(daemons, market, panel, config, out_dir, speed, stop, drain_timeout_s)
    except RedisDataLostError as error:
        bars = market.bars_published if market is not None else 0
        _halt_on_data_lost(daemons, error, config, panel.periods_per_year(), bars)
        raise
    assert daemons is not None and market is not None
    run = daemons.run
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


def _live_market(bus: RedisBus, source: CcxtOhlcvSource, since_ms: int) -> LiveMarketDataService:
    """The live feed; a continued account's publishes only candles after its last bar."""
    last_bar = bus.last_event(BarSet.TOPIC)
    after_ms = None
    if last_bar is not None:
        after_ms = int(last_bar.payload.bar_open.timestamp() * 1000)
    return LiveMarketDataService(bus, source, since_ms, after_ms=after_ms)


def _live(
    daemons: _Daemons,
    market: LiveMarketDataService,
    source: CcxtOhlcvSource,
    config: Config,
    poll_s: float,
    warmup_bars: int,
    stop: threading.Event,
) -> None:
    """Publish live candles and fire the schedule until ``stop``; then halt the services."""
    scheduler = SchedulerService(
        daemons.bus,
        schedule_trigger(config),
        config.schedule.name,
        source.timeframe,
        misfire_grace_s=config.schedule.misfire_grace_s,
        leader_lock_s=config.schedule.leader_lock_s,
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
        out=str(run.out_dir),
    )
    scheduler.start()
    try:
        # Each poll first checks that the account's data is still there.
        market.run(stop, poll_s, check=daemons.bus.check_data)
    finally:
        scheduler.shutdown()
    run.interrupted = True
    daemons.bus.publish(
        Control.TOPIC,
        make_event(
            Control(command="halt", reason="stopped"), source=market.name, corr="end-of-data"
        ),
    )


def live_feed(source: CcxtOhlcvSource) -> str:
    """How a live account names its feed in ``account.json``."""
    return f"live:{source.exchange_id}:{source.timeframe}:{','.join(source.symbols)}"


def market_rules(source: CcxtOhlcvSource) -> dict[str, LotRules]:
    """The lot rules of the traded symbols, from the exchange metadata the candle source
    loaded: the paper broker enforces them and the rebalancer rounds to them."""
    markets = source.exchange.markets or {}
    mode = int(getattr(source.exchange, "precisionMode", TICK_SIZE))
    return {s: lot_rules_from_ccxt(markets[s], mode) for s in source.symbols if s in markets}


def run_live_paper(
    config: Config,
    source: CcxtOhlcvSource,
    out_dir: Path,
    *,
    warmup_bars: int,
    stop: threading.Event,
    poll_interval_s: float | None = None,
    drain_timeout_s: float = 30.0,
    account: PaperAccount | None = None,
    live: bool = False,
) -> PaperRun:
    """Trade on live ccxt candles until ``stop`` is set; rebalances on the wall clock. On
    paper with the simulated broker, on the exchange with ``[broker] kind = "ccxt"`` (its
    sandbox, or real money with ``live`` and ``[broker] live_confirm``).

    A continued account publishes only candles after the last bar it saw.
    """
    step = timeframe_delta(source.timeframe)
    since_ms = int((time.time() - warmup_bars * step.total_seconds()) * 1000)
    poll = poll_interval_s or min(15.0, max(1.0, step.total_seconds() / 4))
    account = account or open_account(out_dir, config.run.namespace, live_feed(source))
    periods_per_year = 365 * 86_400 / step.total_seconds()  # crypto trades every day
    daemons: _Daemons | None = None
    market: LiveMarketDataService | None = None
    try:
        rules = market_rules(source)
        with _daemons(
            config, out_dir, WallClock(), drain_timeout_s, account, stop, live, rules
        ) as daemons:
            market = _live_market(daemons.bus, source, since_ms)
            _live(daemons, market, source, config, poll, warmup_bars, stop)
            if not daemons.quiet.wait(timeout_s=drain_timeout_s):
                log.warning("paper.drain_timeout", timeout_s=drain_timeout_s)
    except RedisDataLostError as error:
        bars = market.bars_published if market is not None else 0
        _halt_on_data_lost(daemons, error, config, periods_per_year, bars)
        raise
    assert daemons is not None and market is not None
    run = daemons.run
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
