"""The consume loop binds each event's ``corr`` for its handler and gives the caller's log
context back afterwards; duplicates inside one batch keep their exact semantics."""

from __future__ import annotations

import msgspec
import structlog

from engine.bus import ConsumerLoop, ConsumeSettings, MemoryBus
from engine.events import Envelope
from tests.events import heartbeat


def with_corr(event: Envelope, corr: str) -> Envelope:
    return msgspec.structs.replace(event, corr=corr)


def loop_on(bus: MemoryBus, handler) -> ConsumerLoop:
    settings = ConsumeSettings(block_ms=0, claim_idle_ms=0, max_deliveries=3)
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
    assert loop.stats.failed == 1 and loop.consumer.pending_count() == 1
    assert "corr" not in structlog.contextvars.get_contextvars()


def test_a_copy_whose_first_twin_failed_in_the_same_batch_is_still_applied():
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
    assert calls == [event.id, event.id]
    assert loop.stats.failed == 1 and loop.stats.duplicates == 0
    assert loop.consumer.pending_count() == 1  # the failed copy waits for reclaim...
    loop.reclaim()
    assert loop.stats.duplicates == 1 and loop.consumer.pending_count() == 0  # ...and is skipped


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
