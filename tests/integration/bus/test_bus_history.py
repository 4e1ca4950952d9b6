"""Reading a topic up to a message (``Bus.history_until``) and guarded commits
(``Consumer.guard_duplicates``): what a group whose members consume at once (signal) relies
on. One contract, the same answers on the in-memory bus and on Redis."""

from __future__ import annotations

import threading
import time

import pytest
from structlog.testing import capture_logs

from engine.bus import Bus
from engine.errors import BusError
from tests.events import heartbeat

IDLE_MS = 50


def processed(entries) -> list[int]:
    return [event.payload.processed for _, event in entries]


def test_history_until_is_the_last_entries_up_to_a_message_oldest_first(bus_factory):
    bus = bus_factory()
    ids = []
    for i in range(10):
        ids.append(bus.publish("alpha", heartbeat(i, "a")))
        bus.publish("beta", heartbeat(100 + i, "b"))  # another topic in between
    history = bus.history_until("alpha", ids[6], 3)
    assert processed(history) == [4, 5, 6]
    assert [message_id for message_id, _ in history] == ids[4:7]
    # Fewer than asked near the start; everything after ``after``, up to the message.
    assert processed(bus.history_until("alpha", ids[1], 5)) == [0, 1]
    assert processed(bus.history_until("alpha", ids[6], 10, after=ids[3])) == [4, 5, 6]
    assert processed(bus.history_until("alpha", ids[6], 2, after=ids[1])) == [5, 6]
    assert bus.history_until("alpha", ids[6], 10, after=ids[6]) == []
    assert bus.history_until("alpha", ids[6], 0) == []
    assert bus.history_until("never_published", ids[6], 3) == []


def test_history_until_is_the_same_for_every_member_whatever_it_consumed(bus_factory):
    bus = bus_factory()
    ids = [bus.publish("alpha", heartbeat(i, "a")) for i in range(6)]
    first = bus_factory().consumer("svc", "one", ["alpha"])
    second = bus_factory().consumer("svc", "two", ["alpha"])
    taken = first.read(2) + second.read(2) + first.read(2)  # each holds a part, unacked
    assert sorted(d.message_id for d in taken) == ids
    for handle in (bus, bus_factory()):
        assert processed(handle.history_until("alpha", ids[4], 4)) == [1, 2, 3, 4]


def test_history_until_skips_what_does_not_decode(bus_factory):
    bus = bus_factory()
    bus.publish("alpha", heartbeat(0, "a"))
    bus.publish_raw("alpha", b"not an event")
    last = bus.publish("alpha", heartbeat(2, "a"))
    with capture_logs() as logs:
        assert processed(bus.history_until("alpha", last, 5)) == [0, 2]
    assert [e["event"] for e in logs] == ["bus.history_skipped"]


def race(bus_factory, guarded: bool) -> tuple[Bus, list, list]:
    """One message held by two members: ``one`` read it and stalled past the idle time,
    ``two`` reclaimed it. Return the bus and both members' deliveries."""
    bus = bus_factory()
    bus.publish("alpha", heartbeat(0, "a"))
    one = bus_factory().consumer("svc", "one", ["alpha"])
    two = bus_factory().consumer("svc", "two", ["alpha"])
    if guarded:
        one.guard_duplicates()
        two.guard_duplicates()
    mine = one.read(10)
    time.sleep(IDLE_MS * 2 / 1000)
    theirs = two.reclaim(IDLE_MS, 10)
    assert [d.message_id for d in theirs] == [d.message_id for d in mine]
    return bus, [one, mine], [two, theirs]


def outputs(bus: Bus) -> list[int]:
    reader = bus.consumer("reader", "r", ["out"])
    return [d.event.payload.processed for d in reader.read(100)]


def test_without_the_guard_two_members_finishing_one_message_both_publish(bus_factory):
    bus, (one, mine), (two, theirs) = race(bus_factory, guarded=False)
    two.commit(theirs, publish=[("out", [heartbeat(2, "two")])])
    one.commit(mine, publish=[("out", [heartbeat(1, "one")])])
    assert outputs(bus) == [2, 1]  # what the guard is for


@pytest.mark.parametrize("first", ["stalled", "reclaimer"])
def test_a_guarded_commit_publishes_once_per_message_whoever_commits_first(bus_factory, first):
    bus, (one, mine), (two, theirs) = race(bus_factory, guarded=True)
    commits = [
        (one, mine, heartbeat(1, "one")),
        (two, theirs, heartbeat(2, "two")),
    ]
    if first == "reclaimer":
        commits.reverse()
    with capture_logs() as logs:
        for consumer, deliveries, output in commits:
            consumer.commit(deliveries, publish=[("out", [output])])
    assert outputs(bus) == [commits[0][2].payload.processed]
    superseded = [e for e in logs if e["event"] == "bus.commit_superseded"]
    assert len(superseded) == 1 and superseded[0]["consumer"] == commits[1][0].name
    assert one.pending_count() == 0


def test_a_guarded_batch_applied_only_in_part_elsewhere_is_refused(bus_factory):
    bus = bus_factory()
    for i in range(2):
        bus.publish("alpha", heartbeat(i, "a"))
    one = bus_factory().consumer("svc", "one", ["alpha"])
    one.guard_duplicates()
    batch = one.read(10)
    time.sleep(IDLE_MS * 2 / 1000)
    two = bus_factory().consumer("svc", "two", ["alpha"])
    two.commit(two.reclaim(IDLE_MS, 1))  # the first of the two, applied by the other
    with pytest.raises(BusError, match="commit_each_message"):
        one.commit(batch, publish=[("out", [heartbeat(9, "one")])])
    assert outputs(bus) == []


def commit_together(members: list[tuple]) -> list[BaseException]:
    """Commit each (consumer, deliveries, name) from its own thread, all released at once;
    return what they raised."""
    start = threading.Barrier(len(members))
    errors: list[BaseException] = []

    def commit(consumer, deliveries, name: str) -> None:
        start.wait()
        try:
            payload = deliveries[0].event.payload.processed
            consumer.commit(deliveries, publish=[("out", [heartbeat(payload, name)])])
        except BaseException as error:  # reported to the test
            errors.append(error)

    threads = [threading.Thread(target=commit, args=member) for member in members]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return errors


def test_members_committing_one_message_at_the_same_moment_publish_it_once(bus_factory):
    bus = bus_factory()
    rounds = 25
    for i in range(rounds):
        bus.publish("alpha", heartbeat(i, "a"))
    one = bus_factory().consumer("svc", "one", ["alpha"])
    two = bus_factory().consumer("svc", "two", ["alpha"])
    one.guard_duplicates()
    two.guard_duplicates()
    for _ in range(rounds):
        mine = one.read(1)
        theirs = two.reclaim(0, 1)  # idle or not: both hold it now
        assert [d.message_id for d in theirs] == [d.message_id for d in mine]
        assert commit_together([(one, mine, "one"), (two, theirs, "two")]) == []
    assert outputs(bus) == list(range(rounds))
    assert one.pending_count() == 0
