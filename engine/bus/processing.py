"""The consume loop shared by every bus: read, skip duplicates, handle, commit, retry, and
dead-letter what cannot succeed, so each bus only supplies the primitives.

Order is kept: a message whose handler raises is retried in place, with a short capped backoff,
until it is applied or dead-lettered, and nothing after it is handled before that.

A stateful service's state is committed with the acknowledgement of the message that produced
it: given ``snapshot``, the loop asks for the state after each applied message (or batch) and
hands it to ``Consumer.commit``, which writes it in the same atomic step. The state a restarted
service loads therefore covers exactly the messages it will not be given again."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog

from engine.bus.base import Consumer, Delivery, Outbox
from engine.errors import BusError
from engine.events import Envelope

Handler = Callable[[Envelope], None]
log = structlog.get_logger("engine.bus")


class LogContextField:
    """One field of structlog's context-local log context (what ``bind_contextvars`` binds),
    set and restored through its ContextVar directly.

    ``bind_contextvars``/``reset_contextvars`` build a dict and look the variable up by name
    on every call, which costs more than delivering a small batch; the variable is the same
    object for the life of the process, so it is taken once from a first bind's token.
    """

    __slots__ = ("var",)

    def __init__(self, key: str) -> None:
        token = structlog.contextvars.bind_contextvars(**{key: None})[key]
        token.var.reset(token)
        self.var: contextvars.ContextVar[Any] = token.var


CORR = LogContextField("corr")
SERVICE = LogContextField("service")


@dataclass(frozen=True, slots=True)
class ConsumeSettings:
    """How a consumer loop paces itself; see ``engine.config.BusConfig`` for the meanings.

    ``retry_backoff_s`` is the wait before the first in-place retry of a failed handler; it
    doubles per retry up to ``retry_backoff_max_s`` (0: retry at once, what tests use).
    ``commit_each_message`` commits (marks processed and acknowledges) each message as soon as
    its handler returned instead of once per batch: for services whose handlers have effects
    outside the process, so a crash re-runs at most the message in hand.
    """

    batch_size: int = 256
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    reclaim_interval_ms: int = 5_000
    max_deliveries: int = 5
    retry_backoff_s: float = 0.05
    retry_backoff_max_s: float = 1.0
    commit_each_message: bool = False


@dataclass(slots=True)
class ConsumeStats:
    """Counters of one loop, logged on shutdown and sent in heartbeats."""

    processed: int = 0
    duplicates: int = 0
    failed: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    # The last event applied: what a heartbeat reports as the service's latest work.
    last_event: Envelope | None = None


_APPLIED, _DEAD_LETTERED, _INTERRUPTED = range(3)


@dataclass
class ConsumerLoop:
    """Run ``handler`` on every event a consumer receives, at least once, effect once, in order.

    A handler that raises is retried in place, after a short capped backoff, up to
    ``max_deliveries`` attempts in all (a redelivered message has used some already); then the
    message is dead-lettered with the reason. Nothing after it is handled before it was applied
    or dead-lettered. When ``stop`` is set during a backoff, the message and the rest of its
    batch stay pending (unacknowledged): a restarted consumer of the same name reads them first.
    Events this group already applied (same event id, e.g. a publisher's retry) are
    acknowledged without calling the handler again.

    ``snapshot`` (a stateful service's ``snapshot_state``) is called after each applied
    message with ``commit_each_message`` (else once per batch), and its bytes are committed in
    the same step as those messages' acknowledgement; None from it writes nothing. Should it
    raise, nothing is committed and the exception ends the loop: the message stays pending, to
    be handled again on the last committed state. The backtest's pump passes none: nothing
    persists there, and serialising would only cost.
    """

    consumer: Consumer
    handler: Handler
    settings: ConsumeSettings = field(default_factory=ConsumeSettings)
    clock: Callable[[], float] = time.monotonic
    stats: ConsumeStats = field(default_factory=ConsumeStats)
    stop: threading.Event = field(default_factory=threading.Event)
    snapshot: Callable[[], bytes | None] | None = None
    # Takes the events the handlers staged since the last commit (a service's outbox), to be
    # appended in the commit itself; None: handlers publish directly.
    outbox: Callable[[], Outbox] | None = None
    # Told each delivery just before its handler runs (and before each retry of it): where
    # the event sits on its topic, for a handler that reads the topic around it (signal).
    on_delivery: Callable[[Delivery], None] | None = None
    _last_reclaim: float | None = None
    # What a stop during a retry left unhandled, in order; handled before anything else.
    _held: list[Delivery] = field(default_factory=list)

    def process(self, deliveries: Sequence[Delivery]) -> int:
        """Handle one batch, in order; return how many events were applied."""
        candidates = self._screen(deliveries)
        if not candidates:
            return 0
        event_ids = [d.event.id for d in candidates]  # type: ignore[union-attr]
        seen = self.consumer.already_processed(event_ids)
        # Duplicates are rare: check for them per event only when the batch has any.
        check_duplicates = any(seen) or (
            len(event_ids) > 1 and len(set(event_ids)) < len(event_ids)
        )
        applied, duplicates = self._apply(candidates, seen, check_duplicates)
        if not self.settings.commit_each_message:
            if applied:
                snapshot, outbox = self.snapshot, self.outbox
                self.consumer.commit(
                    applied,
                    None if snapshot is None else snapshot(),
                    () if outbox is None else outbox(),
                )
            if duplicates:
                self.consumer.ack(duplicates)
        if duplicates:
            self.stats.duplicates += len(duplicates)
            log.info(
                "bus.duplicates_skipped",
                group=self.consumer.group,
                count=len(duplicates),
                event_ids=[d.event.id for d in duplicates if d.event][:10],
            )
        if applied:
            self.stats.processed += len(applied)
            self.stats.last_event = applied[-1].event
        return len(applied)

    def _screen(self, deliveries: Sequence[Delivery]) -> Sequence[Delivery]:
        """Dead-letter what cannot be handled; return the rest (``deliveries`` itself when
        nothing was taken out, the common case, so no list is built)."""
        max_deliveries = self.settings.max_deliveries
        for delivery in deliveries:
            if delivery.error is not None or delivery.attempts > max_deliveries:
                break
        else:
            return deliveries
        candidates: list[Delivery] = []
        for delivery in deliveries:
            if delivery.error is not None:
                self._dead_letter(delivery, f"undecodable: {delivery.error}")
            elif delivery.attempts > max_deliveries:
                self._dead_letter(
                    delivery,
                    f"delivered {delivery.attempts - 1} times without acknowledgement "
                    f"(limit {max_deliveries}): the consumer died or stalled while handling it",
                )
            else:
                candidates.append(delivery)
        return candidates

    def _apply(
        self, candidates: Sequence[Delivery], seen: Sequence[bool], check_duplicates: bool
    ) -> tuple[list[Delivery], list[Delivery]]:
        """Run the handler on each candidate not applied before; return (applied, duplicates).

        With ``commit_each_message`` each applied delivery is committed, and each duplicate
        acknowledged, as soon as it is known; otherwise the caller does both once per batch.
        ``corr`` is bound only when it changes (bursts share one) and the caller's context is
        restored once per batch.
        """
        handler = self.handler
        commit_each = self.settings.commit_each_message
        snapshot, outbox, on_delivery = self.snapshot, self.outbox, self.on_delivery
        corr_var = CORR.var
        applied: list[Delivery] = []
        duplicates: list[Delivery] = []
        applied_ids: set[str] = set()
        outer: contextvars.Token[Any] | None = None
        bound_corr: str | None = None
        try:
            for delivery, was_seen in zip(candidates, seen):
                event = delivery.event
                assert event is not None
                if check_duplicates and (was_seen or event.id in applied_ids):
                    duplicates.append(delivery)
                    if commit_each:
                        self.consumer.ack([delivery])
                    continue
                if event.corr != bound_corr:
                    token = corr_var.set(event.corr)
                    if outer is None:
                        outer = token
                    bound_corr = event.corr
                if on_delivery is not None:
                    on_delivery(delivery)
                try:
                    handler(event)
                except BusError:  # the bus itself failed under the handler: not the message's
                    raise
                except Exception as error:  # a handler bug must not stop the service
                    outcome = self._retry_in_place(delivery, error)
                    if outcome == _DEAD_LETTERED:
                        continue
                    if outcome == _INTERRUPTED:  # rare: find where, keep the rest in order
                        position = next(i for i, d in enumerate(candidates) if d is delivery)
                        self._held.extend(candidates[position + 1 :])
                        break
                applied.append(delivery)
                if commit_each:
                    # The state this message left, acknowledged with it in one atomic step.
                    self.consumer.commit(
                        [delivery],
                        None if snapshot is None else snapshot(),
                        () if outbox is None else outbox(),
                    )
                if check_duplicates:
                    applied_ids.add(event.id)
        finally:
            if outer is not None:
                corr_var.reset(outer)
        return applied, duplicates

    def _retry_in_place(self, delivery: Delivery, error: Exception) -> int:
        """Run the handler of ``delivery`` again until it succeeds, it has had
        ``max_deliveries`` attempts (then dead-letter it), or ``stop`` is set during a backoff
        (then leave it pending). Return ``_APPLIED``, ``_DEAD_LETTERED`` or ``_INTERRUPTED``."""
        settings = self.settings
        event = delivery.event
        assert event is not None
        attempt = delivery.attempts
        delay = min(settings.retry_backoff_s, settings.retry_backoff_max_s)
        while True:
            self.stats.failed += 1
            reason = f"handler raised {type(error).__name__}: {error}"
            last = attempt >= settings.max_deliveries
            log.warning(
                "bus.handler_failed",
                group=self.consumer.group,
                topic=delivery.topic,
                message_id=delivery.message_id,
                event_type=event.type,
                attempt=attempt,
                max_deliveries=settings.max_deliveries,
                error=reason,
                retry_in_s=None if last else round(delay, 3),
            )
            if last:
                self._dead_letter(
                    msgspec.structs.replace(delivery, attempts=attempt),
                    f"{reason} (attempt {attempt} of {settings.max_deliveries})",
                )
                return _DEAD_LETTERED
            if self.stop.wait(delay) if delay > 0 else self.stop.is_set():
                log.warning(
                    "bus.retry_interrupted",
                    group=self.consumer.group,
                    topic=delivery.topic,
                    message_id=delivery.message_id,
                    attempt=attempt,
                    hint="left pending: a restart of this consumer retries it first",
                )
                self._held = [msgspec.structs.replace(delivery, attempts=attempt + 1)]
                return _INTERRUPTED
            attempt += 1
            delay = min(delay * 2, settings.retry_backoff_max_s)
            if self.on_delivery is not None:
                self.on_delivery(delivery)
            try:
                self.handler(event)
            except BusError:
                raise
            except Exception as again:  # the same guard as the first attempt
                error = again
                continue
            log.info(
                "bus.handler_recovered",
                group=self.consumer.group,
                topic=delivery.topic,
                message_id=delivery.message_id,
                attempt=attempt,
            )
            return _APPLIED

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        self.consumer.dead_letter(delivery, reason)
        self.stats.dead_lettered += 1
        log.error(
            "bus.dead_lettered",
            group=self.consumer.group,
            topic=delivery.topic,
            message_id=delivery.message_id,
            attempts=delivery.attempts,
            reason=reason,
        )

    def reclaim(self) -> int:
        """Take over messages pending too long (members that died or stalled) and run them."""
        self._last_reclaim = self.clock()
        deliveries = self.consumer.reclaim(self.settings.claim_idle_ms, self.settings.batch_size)
        if deliveries:
            self.stats.reclaimed += len(deliveries)
            log.info(
                "bus.reclaimed",
                group=self.consumer.group,
                consumer=self.consumer.name,
                count=len(deliveries),
            )
        return self.process(deliveries)

    def run_once(self, block_ms: int | None = None) -> int:
        """Handle one batch, then reclaim if it is time; return events applied.

        What a stop left unhandled comes first; then the consumer's read, which starts with
        this member's own pending entries (a restart's unfinished work) before anything new.
        """
        applied = 0
        if self._held:
            held, self._held = self._held, []
            applied += self.process(held)
            if self._held:
                return applied  # stopped again: nothing may overtake it
        deliveries = self.consumer.read(
            self.settings.batch_size, self.settings.block_ms if block_ms is None else block_ms
        )
        applied += self.process(deliveries)
        if self._held:
            return applied
        interval_s = self.settings.reclaim_interval_ms / 1000
        if self._last_reclaim is None or self.clock() - self._last_reclaim >= interval_s:
            applied += self.reclaim()
        return applied

    def run(self, stop: threading.Event) -> ConsumeStats:
        """Loop until ``stop`` is set; the batch in hand is finished and committed first, but a
        retry waiting on its backoff is abandoned (its message stays pending)."""
        self.stop = stop
        while not stop.is_set():
            self.run_once()
        log.info(
            "bus.consumer_stopped",
            group=self.consumer.group,
            consumer=self.consumer.name,
            processed=self.stats.processed,
            failed=self.stats.failed,
            duplicates=self.stats.duplicates,
            dead_lettered=self.stats.dead_lettered,
            reclaimed=self.stats.reclaimed,
        )
        return self.stats
