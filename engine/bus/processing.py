"""The consume loop shared by every bus: read, skip duplicates, handle, commit, retry, and
dead-letter what cannot succeed, so each bus only supplies the primitives."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from engine.bus.base import Consumer, Delivery
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
    """How a consumer loop paces itself; see ``engine.config.BusConfig`` for the meanings."""

    batch_size: int = 256
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    reclaim_interval_ms: int = 5_000
    max_deliveries: int = 5


@dataclass(slots=True)
class ConsumeStats:
    """Counters of one loop, logged on shutdown and sent in heartbeats."""

    processed: int = 0
    duplicates: int = 0
    failed: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0


@dataclass
class ConsumerLoop:
    """Run ``handler`` on every event a consumer receives, at least once, effect once.

    A handler that raises leaves its message pending; it comes back through reclaim after
    ``claim_idle_ms`` and is dead-lettered once it has been delivered ``max_deliveries`` times.
    Events this group already applied (same event id, e.g. a publisher's retry) are
    acknowledged without calling the handler again.
    """

    consumer: Consumer
    handler: Handler
    settings: ConsumeSettings = field(default_factory=ConsumeSettings)
    clock: Callable[[], float] = time.monotonic
    stats: ConsumeStats = field(default_factory=ConsumeStats)
    _last_reclaim: float | None = None

    def process(self, deliveries: Sequence[Delivery]) -> int:
        """Handle one batch; return how many events were applied."""
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
        if applied:
            self.consumer.commit(applied)
        if duplicates:
            self.consumer.ack(duplicates)
            self.stats.duplicates += len(duplicates)
            log.info(
                "bus.duplicates_skipped",
                group=self.consumer.group,
                count=len(duplicates),
                event_ids=[d.event.id for d in duplicates if d.event][:10],
            )
        self.stats.processed += len(applied)
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

        ``corr`` is bound only when it changes (bursts share one) and the caller's context is
        restored once per batch.
        """
        handler = self.handler
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
                    continue
                if event.corr != bound_corr:
                    token = corr_var.set(event.corr)
                    if outer is None:
                        outer = token
                    bound_corr = event.corr
                try:
                    handler(event)
                except Exception as error:  # a handler bug must not stop the service
                    self._handle_failure(delivery, error)
                    continue
                applied.append(delivery)
                if check_duplicates:
                    applied_ids.add(event.id)
        finally:
            if outer is not None:
                corr_var.reset(outer)
        return applied, duplicates

    def _handle_failure(self, delivery: Delivery, error: Exception) -> None:
        self.stats.failed += 1
        reason = f"handler raised {type(error).__name__}: {error}"
        if delivery.attempts >= self.settings.max_deliveries:
            self._dead_letter(
                delivery,
                f"{reason} (attempt {delivery.attempts} of {self.settings.max_deliveries})",
            )
            return
        log.warning(
            "bus.handler_failed",
            group=self.consumer.group,
            topic=delivery.topic,
            message_id=delivery.message_id,
            event_type=delivery.event.type if delivery.event else None,
            attempt=delivery.attempts,
            max_deliveries=self.settings.max_deliveries,
            error=reason,
            retry_after_ms=self.settings.claim_idle_ms,
        )

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
        """Take over messages pending too long (dead members, failed handlers) and run them."""
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
        """Reclaim if it is time, then read and handle one batch; return events applied."""
        applied = 0
        interval_s = self.settings.reclaim_interval_ms / 1000
        if self._last_reclaim is None or self.clock() - self._last_reclaim >= interval_s:
            applied += self.reclaim()
        deliveries = self.consumer.read(
            self.settings.batch_size, self.settings.block_ms if block_ms is None else block_ms
        )
        return applied + self.process(deliveries)

    def run(self, stop: threading.Event) -> ConsumeStats:
        """Loop until ``stop`` is set; the batch in hand is finished and committed first."""
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
