"""What the in-memory bus does beyond the shared contract: wake blocked readers, let a group
member acknowledge a delivery of a topic it does not read itself, and restart the idle clock of
the pending entries a re-created member reads back, as Redis does."""

from __future__ import annotations

import threading
import time

from engine.bus import MemoryBus
from tests.events import heartbeat


def test_a_blocked_reader_wakes_on_a_single_event_publish():
    bus = MemoryBus()
    consumer = bus.consumer("svc", "c1", ["alpha"])
    got: list[int] = []
    reader = threading.Thread(
        target=lambda: got.extend(d.event.payload.processed for d in consumer.read(10, 5_000))
    )
    reader.start()
    time.sleep(0.05)
    started = time.monotonic()
    bus.publish_many("alpha", [heartbeat(4)])
    reader.join(5)
    assert got == [4] and time.monotonic() - started < 2


def test_single_and_multi_event_publishes_share_one_id_sequence():
    bus = MemoryBus()
    ids = (
        bus.publish_many("alpha", [heartbeat(0)])
        + bus.publish_many("beta", [heartbeat(1), heartbeat(2)])
        + [bus.publish("alpha", heartbeat(3))]
    )
    assert ids == ["1-0", "2-0", "3-0", "4-0"]
    assert bus.topic_length("alpha") == 2 and bus.topic_length("beta") == 2


def test_a_member_acknowledges_a_delivery_of_a_topic_it_does_not_read():
    bus = MemoryBus()
    bus.publish("alpha", heartbeat(1))
    reader = bus.consumer("svc", "reads-alpha", ["alpha"])
    other = bus.consumer("svc", "reads-beta", ["beta"])
    taken = reader.read(10)
    assert reader.pending_count() == 1
    other.commit(taken)
    assert reader.pending_count() == 0
    assert other.already_processed([taken[0].event.id]) == [True]


def test_own_pending_entries_read_back_restart_their_idle_clock_and_never_block():
    now = [100.0]
    bus = MemoryBus(clock=lambda: now[0])
    bus.publish_many("alpha", [heartbeat(i) for i in range(3)])
    bus.consumer("svc", "c1", ["alpha"]).read(2)
    now[0] += 60  # the member died a minute ago
    again = bus.consumer("svc", "c1", ["alpha"])
    started = time.monotonic()
    assert [d.event.payload.processed for d in again.read(2, block_ms=5_000)] == [0, 1]
    assert time.monotonic() - started < 1
    peer = bus.consumer("svc", "c2", ["alpha"])
    assert peer.reclaim(30_000, 10) == []  # just delivered again: not idle any more
    now[0] += 31
    assert [d.attempts for d in peer.reclaim(30_000, 10)] == [3, 3]
    assert [d.event.payload.processed for d in again.read(10)] == [2]
