"""The service runtime: what every daemon shares.

A service declares the payload types it handles; the runtime derives its topics, consumes them
through the service's consumer group, dispatches each event to its handler, acknowledges after
the handler returned, publishes heartbeats, and stops cleanly: on SIGTERM/SIGINT it finishes
and commits the batch in hand, then returns.

**State is committed with the acknowledgement of the message that produced it.** A stateful
service (``snapshot_state`` returns bytes) has its state written in the same atomic commit
(one Redis MULTI) as the acknowledgement of each message it handled. On start, before its first
read, the runner loads that snapshot and restores the service from it; then the consumer reads
its own pending messages first, so every message the snapshot does not cover is handled again,
on exactly the state it was first handled on. A process killed at any point therefore resumes
with exactly the state it had at its last commit.

Effects that left the process before the commit (events published by a handler) are published
again when the handler runs again after a crash; business ids make that harmless: a
``rebalance_id`` runs once and re-emits the same ``client_order_id``s, a duplicate submit is
answered with the order's state, fills are numbered within their order and booked once by
``fill_id``. Nothing is replayed from the ledger on start, and no ordering across topics has to
be reproduced, which a rebuild from several streams would have to do.
"""

from __future__ import annotations

import contextvars
import dataclasses
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, ClassVar, NoReturn, Protocol, TypeVar

import msgspec
import structlog

from engine.bus import Bus, ConsumerLoop, ConsumeSettings, ConsumeStats, Delivery
from engine.bus.keys import state as state_key
from engine.bus.processing import SERVICE
from engine.bus.redis_streams import RedisBus
from engine.clock import Clock
from engine.errors import BusError
from engine.events import (
    BarBlock,
    BarSet,
    Control,
    Envelope,
    EventPayload,
    Heartbeat,
    PortfolioMarks,
    PortfolioSnapshot,
    make_event,
)
from engine.version import VERSION

log = structlog.get_logger("services.runtime.loop")


class HandlerFailedError(RuntimeError):
    """A service's handler raised during an in-process run (backtest)."""


class StateError(RuntimeError):
    """A committed state snapshot cannot be restored: another version of the service wrote
    it, or it is damaged. Starting empty instead would silently lose the account."""


S = TypeVar("S")
_state_encoder = msgspec.msgpack.Encoder()


class _StateVersion(msgspec.Struct):
    version: int = 0


def encode_state(state: msgspec.Struct) -> bytes:
    """Serialise a service's state struct (msgpack: compact, exact floats, aware datetimes)."""
    return _state_encoder.encode(state)


def decode_state(blob: bytes, state_type: type[S], version: int, service: str) -> S:
    """Decode a snapshot written by ``encode_state`` into ``state_type`` (a struct whose first
    field is ``version``), refusing one written by another layout version.

    Raises
    ------
    StateError
        Naming the service, the versions and what to do.
    """
    try:
        found = msgspec.msgpack.decode(blob, type=_StateVersion).version
    except msgspec.DecodeError as error:
        raise StateError(f"{service}: the committed state is unreadable ({error})") from None
    if found != version:
        raise StateError(
            f"{service}: the committed state has layout version {found}, this build reads "
            f"version {version}; run the version that wrote it, or start a fresh account"
        )
    try:
        return msgspec.msgpack.decode(blob, type=state_type)
    except msgspec.DecodeError as error:
        raise StateError(f"{service}: the committed state is unreadable ({error})") from None


Handler = Callable[[Envelope], None]
# Backtest-only block events and the row type each one carries (``Service.handle_rows``).
BLOCK_ROWS: dict[type[EventPayload], type[EventPayload]] = {
    BarBlock: BarSet,
    PortfolioMarks: PortfolioSnapshot,
}


class Service:
    """Base of every daemon's logic; subclasses fill ``handlers``.

    A service is the same object in a backtest (in-memory bus, simulated clock) and in a
    daemon (Redis bus, wall clock): only what is passed in changes.
    """

    name: ClassVar[str] = "service"
    # True for services whose handlers have effects outside the process (orders sent to a
    # broker): each message is then committed as soon as its handler returned, so a crash
    # re-runs at most the message in hand, instead of the whole batch.
    commit_each_message: ClassVar[bool] = False
    # Payload types that arrive on a topic the service reads and that it means to skip;
    # any other type it does not handle is an error (dead-lettered with the reason).
    ignores: ClassVar[frozenset[type[EventPayload]]] = frozenset()

    def __init__(self, bus: Bus, clock: Clock) -> None:
        self.bus = bus
        self.clock = clock
        self.halted = False
        # Who halted it: "run" (the end of a replay) or "operator" (the kill switch).
        self.halt_origin: str | None = None
        self._outbox: list[tuple[str, list[Envelope]]] | None = None
        self._dispatch: dict[type[EventPayload], Handler] = {Control: self._on_control}
        self._dispatch.update(self.handlers())
        # The block adapter: a service without a matrix path for a block type takes its rows.
        for block_type, row_type in BLOCK_ROWS.items():
            if row_type in self._dispatch and block_type not in {*self._dispatch, *self.ignores}:
                self._dispatch[block_type] = self.handle_rows

    def handlers(self) -> dict[type[EventPayload], Handler]:
        """Return the handler of each payload type this service consumes."""
        return {}

    @property
    def topics(self) -> tuple[str, ...]:
        """Topics to consume, derived from the handled payload types."""
        return tuple(dict.fromkeys(payload.TOPIC for payload in self._dispatch))

    def handle(self, event: Envelope) -> None:
        """Dispatch ``event`` to its handler.

        A payload type that shares a topic with handled ones but is of no interest must be
        listed in the service's ``ignores`` (a ``ClassVar[frozenset[type[EventPayload]]]``).
        Any other type raises, so the consume loop dead-letters it with the reason instead of
        acknowledging an event nothing looked at.

        Raises
        ------
        TypeError
            The payload type is neither handled nor ignored; names the service, the type and
            the topic.
        """
        payload_type = type(event.payload)
        handler = self._dispatch.get(payload_type)
        if handler is not None:
            handler(event)
        elif payload_type not in self.ignores:
            raise TypeError(
                f"service {self.name} does not handle {payload_type.__name__} "
                f"(type {event.type!r}) on topic {event.topic!r}: it handles "
                f"{sorted(t.__name__ for t in self._dispatch)}; add a handler or list it in "
                f"{type(self).__name__}.ignores"
            )

    def handle_rows(self, event: Envelope) -> None:
        """Hand each row of a block event (a backtest's BarBlock or PortfolioMarks) to the
        handler of its row type, as if the rows had been sent one by one.

        The one place a block becomes rows: a service with no matrix path gets this as its
        block handler, and one with a matrix path calls it when it cannot take the block whole
        (orders in flight, a stop that may trigger)."""
        payload = event.payload
        row_type = BLOCK_ROWS[type(payload)]
        handler = self._dispatch[row_type]
        for row in payload.rows():  # type: ignore[attr-defined]
            handler(msgspec.structs.replace(event, type=row_type.TYPE, payload=row))

    def emit(self, payloads: Iterable[EventPayload], corr: str, ts: datetime | None = None) -> None:
        """Publish ``payloads`` in order, batching runs that share a topic.

        Under a ServiceRunner the events are staged in the service's outbox and appended by
        the commit that acknowledges the message being handled, in the same atomic step.
        """
        now = ts or self.clock.now()
        publish = self.bus.publish_many if self._outbox is None else self._stage
        batch: list[Envelope] = []
        topic = ""
        for payload in payloads:
            if payload.TOPIC != topic and batch:
                publish(topic, batch)
                batch = []
            topic = payload.TOPIC
            batch.append(make_event(payload, source=self.name, corr=corr, ts=now))
        if batch:
            publish(topic, batch)

    def _stage(self, topic: str, events: list[Envelope]) -> None:
        assert self._outbox is not None
        self._outbox.append((topic, events))

    def stage_emits(self) -> None:
        """From now on, emits wait in an outbox for the commit (see :meth:`take_outbox`)."""
        self._outbox = []

    def take_outbox(self) -> list[tuple[str, list[Envelope]]]:
        """Return the staged events, oldest first, and empty the outbox."""
        staged, self._outbox = self._outbox or [], []
        return staged

    def handle_staged(self, event: Envelope) -> None:
        """Handle ``event``; if the handler raises, drop what it staged, so a retry (or the
        next delivery after a crash) emits it once."""
        assert self._outbox is not None
        mark = len(self._outbox)
        try:
            self.handle(event)
        except BaseException:
            del self._outbox[mark:]
            raise

    def _on_control(self, event: Envelope) -> None:
        control = event.payload
        assert isinstance(control, Control)
        if control.target not in ("*", self.name):
            return
        if control.command == "halt":
            self.halted = True
            if self.halt_origin != "operator":
                self.halt_origin = control.origin
        elif control.command == "resume":
            # A run's resume (a continued account) does not lift an operator's halt.
            if control.origin == "operator" or self.halt_origin != "operator":
                self.halted, self.halt_origin = False, None
        self.on_control(control, event)
        log.info(
            "service.control",
            command=control.command,
            origin=control.origin,
            halted=self.halted,
            reason=control.reason,
        )

    def on_control(self, control: Control, event: Envelope) -> None:
        """React to halt/resume/reload beyond the ``halted`` flag (override as needed)."""

    def on_delivery(self, delivery: Delivery) -> None:
        """Take note of the delivery of the event about to be handled: its topic and message
        id (where it sits on the stream) and its attempts. The consume loop calls it only for
        a service that overrides it (signal reads its topic up to the message in hand)."""

    def start(self) -> None:
        """Called once before the first event, after ``restore_state``: rebuild what the
        snapshot does not hold (override as needed)."""

    def snapshot_state(self) -> bytes | None:
        """Return this service's state as bytes, committed with the acknowledgement of the
        message just handled; None (the default) for a service with no state to keep, and
        nothing is written. Called after every handled message of a ``commit_each_message``
        service (else once per batch): keep it proportionate."""
        return None

    def restore_state(self, blob: bytes) -> None:
        """Become the service that ``snapshot_state`` returned ``blob`` from (called on start,
        before ``start``, when the group committed a snapshot)."""
        raise NotImplementedError(f"service {self.name} keeps no state to restore")

    def state_figures(self) -> dict[str, Any]:
        """A few figures of the current state, logged when it was restored."""
        return {}


def delivery_hook(service: Service) -> Callable[[Delivery], None] | None:
    """``service.on_delivery`` when the service overrides it, else None (the loop then calls
    nothing per message)."""
    if type(service).on_delivery is Service.on_delivery:
        return None
    return service.on_delivery


class ProducerHeartbeat:
    """Heartbeats of a process that produces but consumes nothing (the replay), from a thread
    of its own on a bus of its own: the producer may wait a long time for its consumers, and
    a waiting producer is alive, not stale. ``processed`` counts what ``count()`` returns."""

    def __init__(
        self,
        bus: RedisBus,
        service: str,
        instance: str,
        interval_s: float,
        count: Callable[[], int],
        status: str = "running",
    ) -> None:
        self._bus = RedisBus(bus.url, bus.namespace, socket_timeout_s=5.0, give_up_after_s=5.0)
        if bus.marker_key is not None:  # a beat must not recreate a lost account's keys
            self._bus.guard_data(bus.marker_key)
        self._service = service
        self._instance = f"{service}-{instance or socket.gethostname()}"
        self._status = status
        if status == "standby":  # its own row in `deepfactor status`, beside the active one
            self._instance += ":standby"
        self._interval_s = interval_s
        self._count = count
        self._started = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def _beat(self, status: str) -> None:
        heartbeat = Heartbeat(
            service=self._service,
            instance=self._instance,
            pid=os.getpid(),
            status=status,
            processed=self._count(),
            uptime_s=time.monotonic() - self._started,
            version=VERSION,
            interval_s=self._interval_s,
        )
        try:
            self._bus.publish(Heartbeat.TOPIC, make_event(heartbeat, source=self._service))
        except BusError as error:  # a missed beat shows as stale; it must not stop the work
            log.warning("service.heartbeat_failed", service=self._service, error=str(error))

    def _run(self) -> None:
        self._beat("starting" if self._status == "running" else self._status)
        while not self._done.wait(self._interval_s):
            self._beat(self._status)

    def __enter__(self) -> ProducerHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)
        if self._status == "running":
            self._beat("stopping")
        self._bus.close()


class ServiceObserver(Protocol):
    """What a ``ServiceRunner`` reports to, when given one: the metrics of its service
    (``services.runtime.metrics.ServiceMetrics``)."""

    def message_handled(self, event_type: str, seconds: float, failed: bool = False) -> None:
        """One handler call on an event of ``event_type`` took ``seconds`` (and raised)."""

    def committed(self, events: Sequence[Envelope]) -> None:
        """The commits of one loop turn appended ``events`` to the bus."""

    def heartbeat(self, lag: int | None, pending: int) -> None:
        """A heartbeat went out with these figures (``lag`` None: the bus cannot tell)."""


class ServiceRunner:
    """Run one service as a daemon loop on a bus, with heartbeats, until told to stop.

    Its consumer is named ``{service}-{instance}``: ``instance`` is ``[run] instance``, the host
    name when empty, and never the pid, so a restarted process is the same group member and
    reads its own pending messages first, at once, instead of waiting ``claim_idle_ms`` for
    another member to reclaim them. Two instances of one service on one host need distinct
    instance names.

    A stateful service is restored from its group's committed snapshot before its ``start``
    and before the first read, and its loop commits ``snapshot_state()`` with each message
    (see the module docstring). One group keeps one snapshot: a stateful service must run as
    a single instance.

    With ``metrics`` (a ``ServiceObserver``), each handler call reports its time, each loop
    turn the events its commits appended, and each heartbeat its lag and pending.
    """

    def __init__(
        self,
        service: Service,
        settings: ConsumeSettings,
        heartbeat_s: float = 5.0,
        instance: str = "",
        metrics: ServiceObserver | None = None,
    ) -> None:
        self.service = service
        self.instance = instance or socket.gethostname()
        self.metrics = metrics
        # What the commits of the current loop turn appended, reported once they all held.
        self._committed: list[Envelope] = []
        self.consumer_name = f"{service.name}-{self.instance}"
        if service.commit_each_message and not settings.commit_each_message:
            settings = dataclasses.replace(settings, commit_each_message=True)
        consumer = service.bus.consumer(service.name, self.consumer_name, service.topics)
        stateful = type(service).snapshot_state is not Service.snapshot_state
        # Whatever a handler emits is appended by the commit of the message it handled:
        # outputs, state and acknowledgement in one atomic step (a transactional outbox).
        service.stage_emits()
        observed = self.metrics is not None
        self.loop = ConsumerLoop(
            consumer,
            self._handle_timed if observed else service.handle_staged,
            settings,
            snapshot=service.snapshot_state if stateful else None,
            outbox=self._take_outbox_seen if observed else service.take_outbox,
            on_delivery=delivery_hook(service),
        )
        self.heartbeat_s = heartbeat_s
        self._started = time.monotonic()

    def _heartbeat(self, status: str) -> None:
        stats = self.loop.stats
        consumer = self.loop.consumer
        last = stats.last_event
        heartbeat = Heartbeat(
            service=self.service.name,
            instance=self.consumer_name,
            pid=os.getpid(),
            status=status,
            processed=stats.processed,
            failed=stats.failed,
            uptime_s=time.monotonic() - self._started,
            version=VERSION,
            interval_s=self.heartbeat_s,
            last_event_id=last.id if last else "",
            last_event_type=last.type if last else "",
            last_event_ts=last.ts if last else None,
            lag=consumer.backlog(),
            pending=consumer.pending_count(),
        )
        if self.metrics is not None:
            self.metrics.heartbeat(heartbeat.lag, heartbeat.pending)
        self.service.bus.publish(Heartbeat.TOPIC, make_event(heartbeat, source=self.service.name))

    def _handle_timed(self, event: Envelope) -> None:
        assert self.metrics is not None
        started = time.perf_counter()
        try:
            self.service.handle_staged(event)
        except Exception:
            self.metrics.message_handled(event.type, time.perf_counter() - started, failed=True)
            raise
        self.metrics.message_handled(event.type, time.perf_counter() - started)

    def _take_outbox_seen(self) -> list[tuple[str, list[Envelope]]]:
        staged = self.service.take_outbox()
        for _, events in staged:
            self._committed.extend(events)
        return staged

    def _report_committed(self) -> None:
        # Called once run_once returned: a commit that raised ends the run before this, so
        # only events that reached the bus are counted.
        assert self.metrics is not None
        committed, self._committed = self._committed, []
        self.metrics.committed(committed)

    def restore(self) -> bool:
        """Restore the service from the state its group last committed, if any; return
        whether there was one. Logs ``service.state_restored`` with a few of its figures, or
        ``service.state_empty``."""
        if self.loop.snapshot is None:
            return False  # keeps no state (or rebuilds its own in ``start``)
        group = self.loop.consumer.group
        blob = self.service.bus.load_state(group)
        if blob is None:
            log.info(
                "service.state_empty",
                service=self.service.name,
                key=state_key(self.service.bus.namespace, group),
            )
            return False
        try:
            self.service.restore_state(blob)
        except Exception as error:
            # Never start empty instead: that would silently reset the account.
            log.error(
                "service.state_unreadable",
                service=self.service.name,
                bytes=len(blob),
                error=f"{type(error).__name__}: {error}",
            )
            raise
        log.info(
            "service.state_restored",
            service=self.service.name,
            bytes=len(blob),
            **self.service.state_figures(),
        )
        return True

    def start(self) -> None:
        """What comes before the first read: restore the committed state, then the service's
        own ``start``. The first reads then return this member's pending messages: those the
        snapshot has not applied."""
        self.restore()
        self.service.start()

    def run(self, stop: threading.Event) -> ConsumeStats:
        """Consume until ``stop`` is set; the batch in hand is finished and committed first
        (a failed message waiting for its retry stays pending, for the next start)."""
        # Services can share a process (one thread each): every log line names its own.
        structlog.contextvars.bind_contextvars(service=self.service.name)
        self.loop.stop = stop  # a retry backoff ends at once when asked to stop
        self._heartbeat("starting")
        self.start()
        last_beat = time.monotonic()
        while not stop.is_set():
            self.loop.run_once()
            if self._committed:
                self._report_committed()
            if time.monotonic() - last_beat >= self.heartbeat_s:
                self._heartbeat("running")
                last_beat = time.monotonic()
        self._heartbeat("stopping")
        stats = self.loop.stats
        log.info(
            "service.stopped",
            service=self.service.name,
            instance=self.instance,
            consumer=self.consumer_name,
            processed=stats.processed,
            failed=stats.failed,
            duplicates=stats.duplicates,
            dead_lettered=stats.dead_lettered,
            pending=self.loop.consumer.pending_count(),
        )
        return stats


class Pump:
    """Deliver events to services in one process until nothing moves: the backtest's loop.

    Deterministic: services are polled in a fixed order and each reads everything available.
    One attempt per message (``max_deliveries=1``): a failure is not retried but stops the run.
    """

    def __init__(self, services: Sequence[Service], batch_size: int = 4096) -> None:
        settings = ConsumeSettings(
            batch_size=batch_size,
            block_ms=0,
            claim_idle_ms=0,
            reclaim_interval_ms=10**12,
            max_deliveries=1,
        )
        self._bus = services[0].bus
        for service in services:
            service.start()
        self.loops = [
            ConsumerLoop(
                s.bus.consumer(s.name, f"{s.name}-0", s.topics),
                s.handle,
                settings,
                on_delivery=delivery_hook(s),
            )
            for s in services
        ]
        self._batch_size = batch_size
        # What one poll uses, looked up once: pump() polls every service until all are idle.
        self._polls = [
            (loop.consumer.read, loop.process, loop.stats, loop.consumer.group)
            for loop in self.loops
        ]

    def pump(self) -> int:
        """Run every service until all are idle; return how many events were handled.

        A handler that raises stops the run: a backtest that skipped an event would report
        numbers nobody could trust.
        """
        total = 0
        moved = True
        # ``service`` is bound only when the service in hand changes and restored once at the
        # end: bound_contextvars() per batch copies the whole context, which cost more than
        # delivering a small batch.
        service_var = SERVICE.var
        batch_size = self._batch_size
        outer: contextvars.Token[Any] | None = None
        bound = None
        try:
            while moved:
                moved = False
                for read, process, stats, group in self._polls:
                    deliveries = read(batch_size)
                    if not deliveries:
                        continue
                    if group != bound:
                        token = service_var.set(group)
                        if outer is None:
                            outer = token
                        bound = group
                    handled = process(deliveries)
                    if stats.failed or stats.dead_lettered:
                        self._fail(group)
                    if handled:
                        total += handled
                        moved = True
        finally:
            if outer is not None:
                service_var.reset(outer)
        return total

    def _fail(self, group: str) -> NoReturn:
        reasons = [d.reason for d in self._bus.dead_letters(10_000) if d.group == group]
        raise HandlerFailedError(f"service {group} failed: {reasons[-1] if reasons else '?'}")

    def pending(self) -> int:
        """Return events delivered but not acknowledged, over all services."""
        return sum(loop.consumer.pending_count() for loop in self.loops)
