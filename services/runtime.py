"""The service runtime: what every daemon shares.

A service declares the payload types it handles; the runtime derives its topics, consumes them
through the service's consumer group, dispatches each event to its handler, acknowledges after
the handler returned, publishes heartbeats, and stops cleanly: on SIGTERM/SIGINT it finishes
and commits the batch in hand, then returns.
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
from typing import Any, ClassVar, NoReturn

import structlog

from engine.bus import Bus, ConsumerLoop, ConsumeSettings, ConsumeStats
from engine.bus.processing import SERVICE
from engine.clock import Clock
from engine.events import Control, Envelope, EventPayload, Heartbeat, make_event

log = structlog.get_logger("services.runtime")


class HandlerFailedError(RuntimeError):
    """A service's handler raised during an in-process run (backtest)."""


Handler = Callable[[Envelope], None]


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

    def __init__(self, bus: Bus, clock: Clock) -> None:
        self.bus = bus
        self.clock = clock
        self.halted = False
        self._dispatch: dict[type[EventPayload], Handler] = {Control: self._on_control}
        self._dispatch.update(self.handlers())

    def handlers(self) -> dict[type[EventPayload], Handler]:
        """Return the handler of each payload type this service consumes."""
        return {}

    @property
    def topics(self) -> tuple[str, ...]:
        """Topics to consume, derived from the handled payload types."""
        return tuple(dict.fromkeys(payload.TOPIC for payload in self._dispatch))

    def handle(self, event: Envelope) -> None:
        """Dispatch ``event`` to its handler; other types sharing a topic are ignored."""
        handler = self._dispatch.get(type(event.payload))
        if handler is not None:
            handler(event)

    def emit(self, payloads: Iterable[EventPayload], corr: str, ts: datetime | None = None) -> None:
        """Publish ``payloads`` in order, batching runs that share a topic."""
        now = ts or self.clock.now()
        batch: list[Envelope] = []
        topic = ""
        for payload in payloads:
            if payload.TOPIC != topic and batch:
                self.bus.publish_many(topic, batch)
                batch = []
            topic = payload.TOPIC
            batch.append(make_event(payload, source=self.name, corr=corr, ts=now))
        if batch:
            self.bus.publish_many(topic, batch)

    def _on_control(self, event: Envelope) -> None:
        control = event.payload
        assert isinstance(control, Control)
        if control.target not in ("*", self.name):
            return
        if control.command == "halt":
            self.halted = True
        elif control.command == "resume":
            self.halted = False
        self.on_control(control, event)
        log.info(
            "service.control", command=control.command, halted=self.halted, reason=control.reason
        )

    def on_control(self, control: Control, event: Envelope) -> None:
        """React to halt/resume/reload beyond the ``halted`` flag (override as needed)."""

    def start(self) -> None:
        """Called once before the first event: rebuild state (override as needed)."""


class ServiceRunner:
    """Run one service as a daemon loop on a bus, with heartbeats, until told to stop.

    Its consumer is named ``{service}-{instance}``: ``instance`` is ``[run] instance``, the host
    name when empty, and never the pid, so a restarted process is the same group member and
    reads its own pending messages first, at once, instead of waiting ``claim_idle_ms`` for
    another member to reclaim them. Two instances of one service on one host need distinct
    instance names.
    """

    def __init__(
        self,
        service: Service,
        settings: ConsumeSettings,
        heartbeat_s: float = 5.0,
        instance: str = "",
    ) -> None:
        self.service = service
        self.instance = instance or socket.gethostname()
        self.consumer_name = f"{service.name}-{self.instance}"
        if service.commit_each_message and not settings.commit_each_message:
            settings = dataclasses.replace(settings, commit_each_message=True)
        consumer = service.bus.consumer(service.name, self.consumer_name, service.topics)
        self.loop = ConsumerLoop(consumer, service.handle, settings)
        self.heartbeat_s = heartbeat_s
        self._started = time.monotonic()

    def _heartbeat(self, status: str) -> None:
        stats = self.loop.stats
        heartbeat = Heartbeat(
            service=self.service.name,
            instance=self.consumer_name,
            pid=os.getpid(),
            status=status,
            processed=stats.processed,
            failed=stats.failed,
            uptime_s=time.monotonic() - self._started,
        )
        self.service.bus.publish(Heartbeat.TOPIC, make_event(heartbeat, source=self.service.name))

    def run(self, stop: threading.Event) -> ConsumeStats:
        """Consume until ``stop`` is set; the batch in hand is finished and committed first
        (a failed message waiting for its retry stays pending, for the next start)."""
        # Services can share a process (one thread each): every log line names its own.
        structlog.contextvars.bind_contextvars(service=self.service.name)
        self.loop.stop = stop  # a retry backoff ends at once when asked to stop
        self._heartbeat("starting")
        self.service.start()
        last_beat = time.monotonic()
        while not stop.is_set():
            self.loop.run_once()
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
            ConsumerLoop(s.bus.consumer(s.name, f"{s.name}-0", s.topics), s.handle, settings)
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
