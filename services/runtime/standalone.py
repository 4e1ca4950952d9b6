"""``deepfactor run SERVICE``: one consuming service as its own process, on a Redis every
process of the account can reach.

The account. The processes of one paper account share a run directory (``--out``) and a Redis.
The replay producer (``deepfactor run market-data``, ``services.runtime.feed``) owns the account: it
opens or continues ``RUN_DIR/account.json`` (``services.runtime.account``) and counts the starts. A
consumer never writes it: it waits until the file exists (``--wait`` seconds at most) and takes
its namespace from it, so a consumer started again after a crash is not an account restart.

Locks. Every ``run`` process holds ``RUN_DIR/run.lock`` shared (a ``deepfactor paper`` run holds
it exclusively, so the two never trade one account at once) and ``RUN_DIR/service-{name}.lock``
exclusively. A consumer also holds its service's lock in Redis (``engine.bus.leadership``),
which fences its writes: a stateful service keeps one snapshot per group, so exactly one
instance per account may consume. A second process of a service, on this run directory or on
another host sharing the Redis, is a hot standby: it waits for those locks (logging
``run.standby`` or ``service.standby``, publishing ``standby`` heartbeats) and takes over when
the active one stops (at once) or dies (the kernel drops the file lock at once; the Redis lock
expires after ``[run] lease_ttl_s``, or at once when its holder was a dead process of this
host). It adopts what the dead one left pending and reads it first.

Scale-out. signal keeps no state (``services.daemons.signal`` reads its history from the
stream), so it takes no Redis lease: any number of its processes consume the ``signal`` group
at once, each under its own instance name (``--instance``; its file lock is
``service-signal-{instance}.lock``, so only a second process of the same name waits as a
standby). A member that dies leaves its pending messages to the others, which reclaim them
once idle for ``[bus] claim_idle_ms`` (or to its restart, which reads them first); its commits
are guarded (``Consumer.guard_duplicates``), so a Signal is published once per snapshot even
when a stalled member and the one that reclaimed its message both finish it.

Time. A consumer process has no replay clock: its services' "now" is the time of the event in
hand (``EventTimeClock``), the replay's simulated time or a live feed's.

Stopping. The first SIGTERM or SIGINT finishes and commits the message in hand, then the process
exits 0; a second exits 130 (``services.commands.cli``). A SIGKILL loses nothing committed: the
restarted process restores its service's state and reads its own pending messages first
(``services.runtime.loop``).

The recorder process writes ``summary.json`` and ``equity.csv`` into ``--out`` when it handles
a halt (the end of the data, or a stopped replay) and again when it stops, so the files exist
as soon as the replay is over and are complete once the recorder is stopped. Its ``bars`` are the
bars it holds a mark for (one per bar published); the annualisation comes from
``RUN_DIR/replay.json``, which the market-data process writes from its data.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import statistics
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
import structlog

from engine.bus import Bus, ConsumeStats, RedisBus, keys
from engine.bus.factory import consume_settings, open_redis_bus
from engine.bus.leadership import ServiceLease
from engine.bus.redis_streams import LeaseLostError, RedisDataLostError, redact_url
from engine.clock import Clock
from engine.config import Config
from engine.errors import DeepfactorError, UsageError
from engine.events import Control, Envelope
from services.daemons.recorder import RecorderService
from services.runtime.account import ACCOUNT_FILE
from services.runtime.assembly import build_services
from services.runtime.loop import Handler, ProducerHeartbeat, ServiceRunner
from services.runtime.metrics import ProcessMetrics, serve_metrics
from services.runtime.run_dir import (
    LOCK_FILE,
    RunDirectoryInUseError,
    describe_holder,
    holder_record,
    lock_file,
)

log = structlog.get_logger("services.runtime.standalone")

CONSUMERS = ("factor-update", "signal", "rebalance", "execution", "recorder")
# Services whose processes consume their group together, without a lease (module docstring).
SCALES_OUT = frozenset({"signal"})
REPLAY_FILE = "replay.json"


class StartTimeoutError(DeepfactorError):
    """What a process waits for before it can start (the account, the consumer groups) did not
    appear in time; the message names what is missing and what to start."""


@dataclass(frozen=True)
class AccountRecord:
    """``account.json`` as a consumer reads it (it never writes it)."""

    namespace: str
    feed: str
    starts: int
    marked: bool = False


def read_account(run_dir: Path, option: str = "--out") -> AccountRecord | None:
    """Return the account of ``run_dir``, or None when there is none yet.

    Raises
    ------
    UsageError
        The file is unreadable; the message names it.
    """
    path = run_dir / ACCOUNT_FILE
    try:
        record = json.loads(path.read_text())
        return AccountRecord(
            str(record["namespace"]),
            str(record["feed"]),
            int(record["starts"]),
            bool(record.get("marked", False)),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(f"{option} {run_dir}: {ACCOUNT_FILE} is unreadable ({error})") from None


def wait_for_account(
    run_dir: Path, wait_s: float, stop: threading.Event, option: str = "--out"
) -> AccountRecord | None:
    """Return the account of ``run_dir`` once the market-data process has opened it; None if
    ``stop`` was set first.

    Raises
    ------
    StartTimeoutError
        No account appeared within ``wait_s`` seconds.
    """
    deadline = time.monotonic() + wait_s
    announced = False
    while not stop.is_set():
        account = read_account(run_dir, option)
        if account is not None:
            return account
        if time.monotonic() >= deadline:
            raise StartTimeoutError(
                f"{option} {run_dir}: no paper account ({ACCOUNT_FILE}) after {wait_s:g}s; "
                f"start `deepfactor run market-data --out {run_dir}`, which opens it"
            )
        if not announced:
            log.info("run.waiting_for_account", out=str(run_dir), wait_s=wait_s)
            announced = True
        stop.wait(0.1)
    return None


def guard_account(
    bus: RedisBus,
    run_dir: Path,
    account: AccountRecord,
    wait_s: float,
    stop: threading.Event,
    option: str = "--out",
) -> bool:
    """Guard a consumer process's bus with the account's marker key (``bind_account``): its
    disappearance later halts the process. Return False if ``stop`` was set first.

    The market-data process writes the mark when it connects; until then (a new account) this
    waits, ``wait_s`` seconds at most.

    Raises
    ------
    RedisDataLostError
        account.json says the account is marked but Redis has no mark: the data was lost.
    StartTimeoutError
        The mark did not appear within ``wait_s`` seconds.
    """
    marker = keys.account(account.namespace)
    deadline = time.monotonic() + wait_s
    while not stop.is_set():
        if bus.call("exists_account", lambda: bus.redis.exists(marker)):
            bus.guard_data(marker)
            return True
        if account.marked:
            log.error("run.redis_data_lost", namespace=account.namespace, marker=marker)
            raise RedisDataLostError(
                f"{option} {run_dir}: account.json says paper account {account.namespace} "
                f"exists, but Redis at {redact_url(bus.url)} has no key {marker}: the Redis "
                "data was lost (restarted without persistence, or flushed). Start a new "
                "account there with `deepfactor run market-data --fresh`"
            )
        if time.monotonic() >= deadline:
            raise StartTimeoutError(
                f"{option} {run_dir}: the account {account.namespace} has no mark in Redis at "
                f"{redact_url(bus.url)} after {wait_s:g}s; start `deepfactor run market-data "
                f"--out {run_dir}` on the same Redis"
            )
        stop.wait(0.1)
        account = read_account(run_dir, option) or account
    return False


class EventTimeClock:
    """A consumer process's time: the time of the event being handled (wall time before the
    first). In one process the replay's simulated clock is shared; here the events carry it."""

    def __init__(self) -> None:
        self._now: datetime | None = None

    def now(self) -> datetime:
        return self._now or datetime.now(UTC)

    def follow(self, handler: Handler) -> Handler:
        """Return ``handler`` setting this clock to each event's time first."""

        def handle(event: Envelope) -> None:
            self._now = event.ts
            handler(event)

        return handle


class ProcessLocks:
    """The locks one ``deepfactor run`` process holds in its run directory (module docstring):
    ``run.lock`` shared, ``service-{name}.lock`` exclusive, each naming its latest holder.
    With ``instance`` (a service that scales out), the exclusive one is
    ``service-{name}-{instance}.lock``: one process per consumer name, any number of names."""

    def __init__(
        self,
        run_dir: Path,
        service: str,
        option: str = "--out",
        standby: threading.Event | None = None,
        instance: str | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.service = service
        self.option = option
        # With an event: a second process of the service waits for the first one's lock (a
        # hot standby) until the event is set, instead of being refused.
        self.standby = standby
        self.instance = instance
        self.held = False
        self._fds: list[int] = []

    @property
    def service_lock(self) -> Path:
        if self.instance is not None:
            return self.run_dir / f"service-{self.service}-{self.instance}.lock"
        return self.run_dir / f"service-{self.service}.lock"

    def acquire(self) -> ProcessLocks:
        """Take both locks.

        Raises
        ------
        RunDirectoryInUseError
            A ``deepfactor paper`` run holds the directory, or another process runs this
            service there; the message names the holder.
        UsageError
            A lock file cannot be created or locked.
        """
        shown = f"{self.option} {self.run_dir}"
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            shared = lock_file(self.run_dir / LOCK_FILE, fcntl.LOCK_SH)
            if shared is None:
                holder = describe_holder((self.run_dir / LOCK_FILE).read_bytes())
                raise RunDirectoryInUseError(
                    f"{shown}: in use by a `deepfactor paper` run ({holder}); stop it, or "
                    "choose another directory"
                )
            self._fds.append(shared)
            exclusive = lock_file(self.service_lock, fcntl.LOCK_EX)
            if exclusive is None:
                holder = describe_holder(self.service_lock.read_bytes())
                if self.standby is None:
                    if self.instance is not None:
                        raise RunDirectoryInUseError(
                            f"{shown}: {self.service} instance {self.instance} already runs "
                            f"there ({holder}); give each process of {self.service} its own "
                            "--instance"
                        )
                    raise RunDirectoryInUseError(
                        f"{shown}: {self.service} already runs there ({holder}); one process "
                        "per service and run directory"
                    )
                log.info("run.standby", service=self.service, active=holder, out=str(shown))
                while exclusive is None and not self.standby.wait(0.2):
                    exclusive = lock_file(self.service_lock, fcntl.LOCK_EX)
                if exclusive is None:  # stopped while waiting
                    return self
            self._fds.append(exclusive)
            self.held = True
            # Written once both are held: a refused process must not replace a live holder's
            # record. run.lock names the latest `run` process to a refused `deepfactor paper`.
            record = holder_record(service=self.service)
            for fd in (exclusive, shared):
                os.ftruncate(fd, 0)
                os.pwrite(fd, record, 0)
        except OSError as error:
            self.release()
            raise UsageError(f"{shown}: cannot lock ({error.strerror or error})") from None
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Drop the locks (the files stay)."""
        fds, self._fds = self._fds, []
        for fd in reversed(fds):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> ProcessLocks:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def write_replay_info(run_dir: Path, feed: str, periods_per_year: float) -> None:
    """Write ``RUN_DIR/replay.json``: what the recorder process needs from the data it does not
    read (the annualisation), written by the market-data process, replaced atomically."""
    target = run_dir / REPLAY_FILE
    partial = target.with_name(f".{REPLAY_FILE}.partial")
    partial.write_text(
        json.dumps({"feed": feed, "periods_per_year": periods_per_year}, indent=2) + "\n"
    )
    os.replace(partial, target)


def _periods_per_year(run_dir: Path, feed: str | None, times: list[datetime]) -> float:
    """The annualisation of ``replay.json`` when it describes the account's feed; else, as for
    live data, 365 days of the bars' median spacing."""
    try:
        record = json.loads((run_dir / REPLAY_FILE).read_text())
        if record["feed"] == feed:
            return float(record["periods_per_year"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    spacing = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
    step = statistics.median(spacing) if spacing else 86_400.0
    log.warning(
        "recorder.periods_per_year_inferred",
        reason=f"no {REPLAY_FILE} for this account's feed",
        bar_seconds=step,
    )
    return 365 * 86_400 / step


class RecorderProcess(RecorderService):
    """The recorder of a ``run recorder`` process: also writes the run's files (module
    docstring) into ``out_dir``."""

    def __init__(self, bus: Bus, clock: Clock, out_dir: Path, initial_cash: float) -> None:
        self.out_dir = out_dir
        self.initial_cash = initial_cash
        super().__init__(bus, clock)

    def on_control(self, control: Control, event: Envelope) -> None:
        if control.command == "halt":
            self.write_files(f"halt: {control.reason or 'operator'}")

    def write_files(self, why: str, stopped_reason: str | None = None) -> dict[str, Any] | None:
        """Write ``summary.json`` and ``equity.csv`` (with ``stopped_reason`` when the run was
        halted by a fault); return the summary (None if it failed: logged, never raised, so
        the service goes on)."""
        try:
            account = read_account(self.out_dir)
            times = sorted(self.rows)
            periods = _periods_per_year(self.out_dir, account and account.feed, times)
            summary = self.summary(self.initial_cash, periods, len(self.rows))
            summary["restarts"] = account.starts - 1 if account else 0
            if stopped_reason is not None:
                summary["stopped_reason"] = stopped_reason
            self.write(self.out_dir, summary)
        except (OSError, UsageError, ValueError) as error:
            log.error("recorder.write_failed", out=str(self.out_dir), why=why, error=str(error))
            return None
        log.info(
            "recorder.written",
            out=str(self.out_dir),
            why=why,
            bars=summary["bars"],
            orders=summary["orders"],
            final_equity=round(summary["final_equity"], 2),
        )
        return summary


def build_service(name: str, config: Config, bus: Bus, clock: Clock, out_dir: Path):
    """Return the consuming service ``name`` of ``config`` on ``bus`` (as ``deepfactor paper``
    builds it; the recorder also writes the run's files into ``out_dir``). The processes of
    an account replay recorded bars, so execution trades on the simulated broker."""
    if name == "recorder":
        return RecorderProcess(bus, clock, out_dir, config.portfolio.initial_cash)
    if name not in CONSUMERS:
        raise UsageError(f"unknown service {name!r}; expected one of {', '.join(CONSUMERS)}")
    return getattr(build_services(config, bus, clock), name.replace("-", "_"))


def _run_active(
    config: Config,
    name: str,
    out_dir: Path,
    bus: RedisBus,
    clock: EventTimeClock,
    namespace: str,
    stop: threading.Event,
) -> ConsumeStats:
    """Run service ``name`` as the account's active instance (its lease held): adopt what a
    previous holder left pending, restore the committed state, consume until ``stop``. A
    service that scales out (``SCALES_OUT``, no lease) is one member among any number: it
    adopts nothing (the other members' pending messages are theirs while they live; idle
    ones are reclaimed) and guards its commits against duplicates instead."""
    service = build_service(name, config, bus, clock, out_dir)
    # [metrics] enabled: served while the loop runs (a standby serves nothing).
    families = ProcessMetrics() if config.metrics.enabled else None
    runner = ServiceRunner(
        service,
        consume_settings(config),
        config.paper.heartbeat_s,
        config.run.instance,
        metrics=families.service(name, config.run.instance) if families else None,
    )
    runner.loop.handler = clock.follow(runner.loop.handler)
    if name in SCALES_OUT:
        runner.loop.consumer.guard_duplicates()
    else:
        runner.loop.consumer.adopt_pending()  # type: ignore[attr-defined]
    log.info(
        "run.started",
        namespace=namespace,
        consumer=runner.consumer_name,
        pid=os.getpid(),
        out=str(out_dir),
    )
    try:
        with serve_metrics(config.metrics, name, families):
            stats = runner.run(stop)
    except RedisDataLostError as error:
        log.error("run.redis_data_lost", namespace=namespace, service=name)
        if isinstance(service, RecorderProcess):
            reason = f"redis data lost: {error}"
            service.write_files("redis data lost", stopped_reason=reason)
        raise
    if isinstance(service, RecorderProcess):
        service.write_files("stopped")
    return stats


def run_service(
    config: Config,
    name: str,
    out_dir: Path,
    *,
    stop: threading.Event,
    wait_s: float = 60.0,
    option: str = "--out",
) -> ConsumeStats | None:
    """Run the consuming service ``name`` of the account in ``out_dir`` until ``stop`` is set;
    return its loop's counters (None if stopped before the account appeared).

    Raises
    ------
    UsageError
        The run directory is held by a ``deepfactor paper`` run, or the account file is
        unreadable. (Another process of this service there makes this one its standby.)
    StartTimeoutError
        No account appeared within ``wait_s`` seconds.
    StateError
        The service's committed state cannot be restored.
    """
    instance = config.run.instance or socket.gethostname()
    member = instance if name in SCALES_OUT else None  # locks its consumer name only
    with ProcessLocks(out_dir, name, option, standby=stop, instance=member) as locks:
        if not locks.held:
            return None
        account = wait_for_account(out_dir, wait_s, stop, option)
        if account is None:
            return None
        config = msgspec.structs.replace(
            config, run=msgspec.structs.replace(config.run, namespace=account.namespace)
        )
        clock = EventTimeClock()
        with open_redis_bus(config, stop=stop) as bus:
            if not guard_account(bus, out_dir, account, wait_s, stop, option):
                return None
            if name in SCALES_OUT:  # no lease: one member of the group among any number
                return _run_active(config, name, out_dir, bus, clock, account.namespace, stop)
            lease = ServiceLease(
                bus, name, f"{name}-{instance}", config.run.lease_ttl_s, stop_when_lost=stop
            )
            standby = ProducerHeartbeat(
                bus, name, instance, config.paper.heartbeat_s, lambda: 0, status="standby"
            )
            if not lease.try_acquire():
                with standby:  # a hot standby: imported, connected, waiting for the lock
                    if not lease.acquire(stop):
                        return None
            try:
                stats = _run_active(config, name, out_dir, bus, clock, account.namespace, stop)
            finally:
                lease.release()
            if lease.lost.is_set():
                raise LeaseLostError(
                    f"{name}: its lock {lease.key} expired and another instance took over; "
                    "this one stopped without committing anything more"
                )
    return stats
