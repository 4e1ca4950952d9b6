"""The consume loop binds each event's ``corr`` for its handler and gives the caller's log
context back afterwards; duplicates inside one batch keep their exact semantics; a failed
handler is retried in place with a capped backoff that a stop request cuts short."""

from __future__ import annotations

import threading

import msgspec
import structlog

from engine.bus import ConsumerLoop, ConsumeSettings, MemoryBus
from engine.events import Envelope
from tests.events import heartbeat


def with_corr(event: Envelope, corr: str) -> Envelope:
    return msgspec.structs.replace(event, corr=corr)


def loop_on(bus: MemoryBus, handler, **overrides) -> ConsumerLoop:
    settings = ConsumeSettings(
        **{"block_ms": 0, "claim_idle_ms": 0, "max_deliveries": 3, "retry_backoff_s": 0} | overrides
    )
    return ConsumerLoop(bus.consumer("svc", "c1", ["alpha"]), handler, settings)


def test_handler_sees_each_events_corr_and_the_callers_context_comes_back():
    bus = MemoryBus()
    bus.publish_many(
        "alpha",
        [with_corr(heartbeat(i), corr) for i, corr in enumerate(["rb-1", "rb-1", "rb-2", "rb-1"])],
    )
    seen: list[str | None] = []
    loop = loop_on(bus, lambda event: seen.append(structlog.contextvars.get_contextvars()["corr"]))
    with structlog.contextvars.bound_contextvars(corr="outer", service="caller"):
        assert loop.run_once(block_ms=0) == 4
        assert structlog.contextvars.get_contextvars() == {"corr": "outer", "service": "caller"}
    assert seen == ["rb-1", "rb-1", "rb-2", "rb-1"]
    assert "corr" not in structlog.contextvars.get_contextvars()


def test_context_comes_back_when_a_handler_raises():
    bus = MemoryBus()
    bus.publish("alpha", with_corr(heartbeat(1), "rb-9"))

    def explode(event: Envelope) -> None:
        raise RuntimeError("boom")

    loop = loop_on(bus, explode)
    assert loop.run_once(block_ms=0) == 0
    assert loop.stats.failed == 3 and loop.stats.dead_lettered == 1  # 3 attempts in place
    assert loop.consumer.pending_count() == 0
    assert "corr" not in structlog.contextvars.get_contextvars()


def test_a_twin_of_a_copy_that_failed_then_succeeded_in_place_is_a_duplicate():
    bus = MemoryBus()
    event = heartbeat(7)
    bus.publish_many("alpha", [event, event])
    calls: list[str] = []

    def fail_once(received: Envelope) -> None:
        calls.append(received.id)
        if len(calls) == 1:
            raise ConnectionError("broker timeout")

    loop = loop_on(bus, fail_once)
    assert loop.run_once(block_ms=0) == 1
    assert calls == [event.id, event.id]  # the first copy, failed then retried in place
    assert loop.stats.failed == 1 and loop.stats.duplicates == 1
    assert loop.consumer.pending_count() == 0


def test_a_twin_of_a_dead_lettered_copy_is_still_applied():
    bus = MemoryBus()
    event = heartbeat(7)
    bus.publish_many("alpha", [event, event])
    calls: list[str] = []

    def fail_thrice(received: Envelope) -> None:
        calls.append(received.id)
        if len(calls) <= 3:
            raise ConnectionError("broker timeout")

    loop = loop_on(bus, fail_thrice)
    assert loop.run_once(block_ms=0) == 1
    assert len(calls) == 4 and loop.stats.dead_lettered == 1 and loop.stats.duplicates == 0
    assert loop.consumer.pending_count() == 0


def test_already_applied_events_are_acknowledged_without_the_handler():
    bus = MemoryBus()
    events = [heartbeat(i) for i in range(3)]
    bus.publish_many("alpha", events)
    applied: list[int] = []
    loop = loop_on(bus, lambda e: applied.append(e.payload.processed))
    loop.run_once(block_ms=0)
    bus.publish_many("alpha", [events[1], heartbeat(3)])
    loop.run_once(block_ms=0)
    assert applied == [0, 1, 2, 3]
    assert loop.stats.duplicates == 1 and loop.stats.processed == 4
    assert loop.consumer.pending_count() == 0


class RecordingStop:
    """A stop event that records the backoffs waited on it, and is set after ``set_after``."""

    def __init__(self, set_after: int | None = None) -> None:
        self.waits: list[float] = []
        self._set_after = set_after

    def is_set(self) -> bool:
        return self._set_after is not None and len(self.waits) >= self._set_after

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        return self.is_set()


def test_retry_backoff_doubles_up_to_its_cap_between_attempts():
    bus = MemoryBus()
    bus.publish("alpha", heartbeat(1))

    def explode(event: Envelope) -> None:
        raise RuntimeError("boom")

    loop = loop_on(bus, explode, max_deliveries=5, retry_backoff_s=0.05, retry_backoff_max_s=0.15)
    loop.stop = RecordingStop()  # type: ignore[assignment]
    loop.run_once(block_ms=0)
    assert loop.stop.waits == [0.05, 0.1, 0.15, 0.15]  # none after the last attempt
    assert loop.stats.failed == 5 and loop.stats.dead_lettered == 1


def test_a_stop_during_backoff_holds_the_rest_of_the_batch_and_nothing_overtakes_it():
    bus = MemoryBus()
    bus.publish_many("alpha", [heartbeat(i) for i in range(1, 6)])
    effects: list[int] = []
    broken = {3}

    def handler(event: Envelope) -> None:
        if event.payload.processed in broken:
            raise ConnectionError("broker timeout")
        effects.append(event.payload.processed)

    loop = loop_on(bus, handler, retry_backoff_s=0.05, batch_size=3)
    loop.stop = RecordingStop(set_after=1)  # type: ignore[assignment]
    assert loop.run_once(block_ms=0) == 2
    assert effects == [1, 2] and loop.consumer.pending_count() == 1  # 3 held, not acked
    assert loop.run_once(block_ms=0) == 0  # still stopped: 3 stays first, 4 and 5 unread
    assert effects == [1, 2] and loop.consumer.pending_count() == 1
    broken.clear()
    loop.stop = threading.Event()
    assert loop.run_once(block_ms=0) == 3  # the held 3 first, then what comes after it
    assert effects == [1, 2, 3, 4, 5] and loop.consumer.pending_count() == 0
    assert bus.dead_letters() == []


def test_commit_each_message_commits_and_acks_duplicates_one_by_one():
    bus = MemoryBus()
    events = [heartbeat(i) for i in range(3)]
    bus.publish_many("alpha", [events[0], events[1], events[1], events[2]])
    pending_seen: list[int] = []
    loop = loop_on(
        bus,
        lambda e: pending_seen.append(loop.consumer.pending_count()),
        commit_each_message=True,
    )
    assert loop.run_once(block_ms=0) == 3
    assert pending_seen == [4, 3, 1]  # each handler sees the earlier ones (and the twin) gone
    assert loop.stats.duplicates == 1 and loop.consumer.pending_count() == 0
