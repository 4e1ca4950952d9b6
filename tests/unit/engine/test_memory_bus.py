"""What the in-memory bus does beyond the shared contract: wake blocked readers, and let a
group member acknowledge a delivery of a topic it does not read itself."""

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
