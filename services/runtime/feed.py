"""``deepfactor run market-data``: the replay producer as its own process.

It owns the paper account of its run directory: it opens or continues ``RUN_DIR/account.json``
(``services.runtime.account``; a continued account's feed resumes after the last step it saw and a
``resume`` control lifts a halt a stopped run left; ``--fresh`` replaces it), marks it in Redis
(``bind_account``: a Redis that loses the mark halts every process of the account), writes
``config.json`` and ``replay.json`` (the annualisation, for the recorder process), then waits
until every consumer group of the account exists (each ``deepfactor run SERVICE`` creates its
own when it starts; ``--wait`` seconds at most, then it exits naming the missing services).

It steps like ``deepfactor paper`` (``services.runtime.paper.feed_replay``): one bar or tick at a
time, each followed by a wait until every group has consumed and acknowledged everything. Unlike the
one-process run, that wait has no time limit: a consumer process that died holds its group
back until it is started again, and the replay waits for it (logging ``market_data.waiting``
with the groups behind every 10 s), so a crash changes no decision. SIGTERM or SIGINT ends the
replay with a ``halt`` ("stopped"); the end of the data halts with "end of data".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import redis
import structlog

from engine.bus import RedisBus, keys
from engine.bus.factory import open_redis_bus
from engine.clock import SimulatedClock
from engine.config import Config
from engine.data import Panel
from engine.events import Control, make_event
from services.daemons.market_data import MarketDataService, to_datetime
from services.runtime.account import bind_account, delete_namespace, open_account
from services.runtime.assembly import build_services, schedule_trigger
from services.runtime.loop import ProducerHeartbeat
from services.runtime.paper import feed_replay, replay_feed
from services.runtime.quiescence import RedisQuiescence
from services.runtime.run_dir import RunDirectory
from services.runtime.standalone import ProcessLocks, StartTimeoutError, write_replay_info

log = structlog.get_logger("services.runtime.feed")

Groups = Sequence[tuple[str, Sequence[str]]]
REPORT_EVERY_S = 10.0


@dataclass
class FeedRun:
    """What a market-data process did."""

    namespace: str
    bars: int = 0
    ticks: int = 0
    interrupted: bool = False
    restarts: int = 0


def _group_states(bus: RedisBus, groups: Groups) -> dict[tuple[str, str], dict | None]:
    """Per (group, topic): XINFO GROUPS's entry, with the stream's last id under ``stream-last``;
    None for a group (or stream) that does not exist yet."""
    topics = sorted({topic for _, group_topics in groups for topic in group_topics})

    def read() -> dict[tuple[str, str], dict | None]:
        out: dict[tuple[str, str], dict | None] = {}
        for topic in topics:
            key = keys.stream(bus.namespace, topic)
            try:
                last = bus.redis.xinfo_stream(key)["last-generated-id"]
                found = {
                    (g["name"].decode() if isinstance(g["name"], bytes) else g["name"]): g
                    for g in bus.redis.xinfo_groups(key)
                }
            except redis.ResponseError:  # no such stream yet
                last, found = None, {}
            for group, group_topics in groups:
                if topic in group_topics:
                    state = found.get(group)
                    out[group, topic] = None if state is None else {**state, "stream-last": last}
        return out

    return bus.call("xinfo", read)


def missing_services(bus: RedisBus, groups: Groups) -> list[str]:
    """The services among ``groups`` whose consumer group is missing on any of its topics."""
    states = _group_states(bus, groups)
    return sorted({group for (group, _), state in states.items() if state is None})


def lagging_groups(bus: RedisBus, groups: Groups) -> list[str]:
    """Where the replay waits, in words: ``group on topic: N pending, behind``."""
    out = []
    for (group, topic), state in _group_states(bus, groups).items():
        if state is None:
            out.append(f"{group} on {topic}: no group")
            continue
        behind = state["last-delivered-id"] != state["stream-last"]
        if state["pending"] or behind:
            out.append(
                f"{group} on {topic}: {state['pending']} pending" + (", behind" if behind else "")
            )
    return out


def wait_for_services(
    bus: RedisBus, groups: Groups, wait_s: float, stop: threading.Event, out_dir: Path
) -> bool:
    """Wait until every group of ``groups`` exists; return False if ``stop`` was set first.

    Raises
    ------
    StartTimeoutError
        Some did not appear within ``wait_s`` seconds; the message names their services.
    """
    deadline = time.monotonic() + wait_s
    announced = False
    while not stop.is_set():
        missing = missing_services(bus, groups)
        if not missing:
            return True
        if time.monotonic() >= deadline:
            raise StartTimeoutError(
                f"market-data: no consumer group of {', '.join(missing)} in namespace "
                f"{bus.namespace} after {wait_s:g}s; start each with `deepfactor run SERVICE "
                f"--out {out_dir}` (same --config and Redis)"
            )
        if not announced:
            log.info("market_data.waiting_for_services", missing=missing, wait_s=wait_s)
            announced = True
        stop.wait(0.1)
    return False


def wait_caught_up(
    bus: RedisBus, quiet: RedisQuiescence, groups: Groups, stop: threading.Event
) -> bool:
    """Wait, with no time limit, until every group has caught up; False if ``stop`` came
    first. Says every ``REPORT_EVERY_S`` which groups it waits for."""
    started = reported = time.monotonic()
    bus.check_data()  # each step: the account's data must still be there
    while not quiet.caught_up():
        if stop.is_set():
            return False
        now = time.monotonic()
        if now - started >= 0.2:
            bus.check_data()  # a group stalled: lost data is one reason why
        if now - reported >= REPORT_EVERY_S:
            log.warning(
                "market_data.waiting",
                waited_s=round(now - started, 1),
                behind=lagging_groups(bus, groups),
            )
            reported = now
        # Poll fast while a step is being handled; a stalled group is polled gently.
        time.sleep(0.001 if now - started < 0.2 else 0.02)
    return True


def run_market_data(
    config: Config,
    panel: Panel,
    out_dir: Path,
    *,
    speed: float,
    stop: threading.Event,
    wait_s: float = 60.0,
    drain_timeout_s: float = 30.0,
    option: str = "--out",
    fresh: bool = False,
) -> FeedRun:
    """Replay ``panel`` into the account of ``out_dir`` (opened there if there is none) for
    the consumer processes of that account; ``speed`` in bars/s, 0 = no cap.

    Raises
    ------
    UsageError
        The directory is held by a ``deepfactor paper`` run or another market-data process,
        or its account trades another feed.
    RedisDataLostError
        The account is marked in account.json but not in Redis (``bind_account``), or its
        data went during the replay.
    StartTimeoutError
        The consumer groups did not all appear within ``wait_s`` seconds.
    """
    with ProcessLocks(out_dir, "market-data", option):
        account = open_account(
            out_dir, config.run.namespace, replay_feed(panel), fresh=fresh, option=option
        )
        RunDirectory(out_dir, option=option).write_config(config)
        write_replay_info(out_dir, account.feed, panel.periods_per_year())
        config = msgspec.structs.replace(
            config, run=msgspec.structs.replace(config.run, namespace=account.namespace)
        )
        run = FeedRun(namespace=account.namespace, restarts=account.restarts)
        clock = SimulatedClock(to_datetime(panel.bar_open[0]))
        with open_redis_bus(config, stop=stop) as bus:
            if account.retired_namespace:
                delete_namespace(bus, account.retired_namespace)
            # Mark (or check) the account in Redis: its data gone halts every process.
            bind_account(bus, account, out_dir, option)
            groups = [(s.name, s.topics) for s in build_services(config, bus, clock).all()]
            if account.resumed:
                # A halt left by the stopped run must not stop the continued one.
                bus.publish(
                    Control.TOPIC,
                    make_event(
                        Control(command="resume", reason="paper account resumed"),
                        source=MarketDataService.name,
                        corr="resume",
                    ),
                )
            if not wait_for_services(bus, groups, wait_s, stop, out_dir):
                run.interrupted = True
                return run
            market = MarketDataService(
                bus, panel, schedule_trigger(config), config.schedule.name, clock
            )
            quiet = RedisQuiescence(bus, groups)
            log.info(
                "market_data.started",
                namespace=account.namespace,
                redis=bus.url,
                bars=panel.n_bars,
                symbols=len(panel.symbols),
                speed=speed or "max",
                restarts=account.restarts,
                out=str(out_dir),
            )
            beats = ProducerHeartbeat(
                bus,
                MarketDataService.name,
                config.run.instance,
                config.paper.heartbeat_s,
                lambda: market.bars_published + market.ticks_published,
            )
            with beats:
                run.interrupted = feed_replay(
                    market,
                    bus,
                    lambda: wait_caught_up(bus, quiet, groups, stop),
                    speed=speed,
                    stop=stop,
                )
            if not quiet.wait(timeout_s=drain_timeout_s):
                log.warning(
                    "market_data.drain_timeout",
                    timeout_s=drain_timeout_s,
                    behind=lagging_groups(bus, groups),
                )
            run.bars, run.ticks = market.bars_published, market.ticks_published
    log.info(
        "market_data.done",
        namespace=run.namespace,
        bars=run.bars,
        rebalances=run.ticks,
        interrupted=run.interrupted,
    )
    return run
