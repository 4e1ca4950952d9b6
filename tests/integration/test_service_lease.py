"""One active instance of a stateful service, on a real Redis: a second instance waits, takes
over when the lock expires, adopts what the first left pending, and the first, should it wake
up, can no longer write anything (fencing)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest

from engine.bus import RedisBus, keys
from engine.bus.leadership import LeaseLostError, ServiceLease
from engine.events import Control, make_event


@pytest.fixture
def buses(redis_url: str, namespace: str):
    made = [RedisBus(redis_url, namespace, give_up_after_s=5) for _ in range(2)]
    yield made
    for bus in made:
        bus.close()


def control(n: int):
    return make_event(Control(command="resume", reason=f"n{n}"), source="t", ts=datetime.now(UTC))


def test_a_second_instance_waits_then_takes_over_and_fences_the_first(buses) -> None:
    first_bus, second_bus = buses
    first = ServiceLease(first_bus, "rebalance", "rebalance-a", ttl_s=1.0)
    second = ServiceLease(second_bus, "rebalance", "rebalance-b", ttl_s=1.0)
    assert first.try_acquire()
    assert not second.try_acquire()
    assert second.holder() is not None and second.holder().startswith("rebalance-a pid")
    first_bus.publish("control", control(1))  # the holder writes
    # Renewals keep it held well past its time to live.
    time.sleep(2.5)
    assert not second.try_acquire() and not first.lost.is_set()
    # The first stalls (its renewals stop, as in a long pause): the lock expires.
    first._done.set()
    stop = threading.Event()
    started = time.monotonic()
    assert second.acquire(stop)
    assert time.monotonic() - started < 2.0  # within the time to live, plus a poll
    second_bus.publish("control", control(2))
    length = first_bus.topic_length("control")
    with pytest.raises(LeaseLostError, match="another instance is active"):
        first_bus.publish("control", control(3))  # the stalled one wakes up: fenced
    assert first_bus.topic_length("control") == length  # nothing of it was written
    second.release()
    assert first_bus.redis.get(keys.service_lock(first_bus.namespace, "rebalance")) is None


def test_a_renewal_that_finds_the_lock_taken_sets_lost_and_stops_the_process(buses) -> None:
    first_bus, second_bus = buses
    stop = threading.Event()
    first = ServiceLease(first_bus, "execution", "execution-a", ttl_s=1.0, stop_when_lost=stop)
    assert first.try_acquire()
    # Taken over behind its back (expired during a partition, say).
    key = keys.service_lock(first_bus.namespace, "execution")
    second_bus.redis.set(key, "execution-b pid 1 on elsewhere #x")
    assert first.lost.wait(2.0)
    assert stop.is_set()
    first.release()  # must not delete the new holder's lock
    assert second_bus.redis.get(key) == b"execution-b pid 1 on elsewhere #x"


def test_the_new_holder_adopts_the_pending_messages_and_reads_them_first(buses) -> None:
    first_bus, second_bus = buses
    for n in range(5):
        first_bus.publish("control", control(n))
    dead = first_bus.consumer("rebalance", "rebalance-a", ["control"])
    dead.ensure_groups()
    held = dead.read(3)  # delivered to the first instance, never acknowledged: it died
    assert len(held) == 3
    heir = second_bus.consumer("rebalance", "rebalance-b", ["control"])
    assert heir.adopt_pending() == 3
    first_reads = heir.read(10)
    assert [d.event.payload.reason for d in first_reads[:3]] == ["n0", "n1", "n2"]
    assert [d.event.payload.reason for d in first_reads[3:]] == ["n3", "n4"]
    summary = second_bus.redis.xpending(keys.stream(second_bus.namespace, "control"), "rebalance")
    assert summary["pending"] == 5
    assert {c["name"]: c["pending"] for c in summary["consumers"]} == {b"rebalance-b": 5}
    heir.ack(first_reads)
    assert heir.pending_count() == 0


def test_a_dead_holder_of_this_host_is_cleared_at_once_a_live_one_is_not(buses) -> None:
    bus = buses[0]
    key = keys.service_lock(bus.namespace, "recorder")
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(child.stdout)  # exited and reaped: nobody has this pid now
    lease = ServiceLease(bus, "recorder", "recorder-b", ttl_s=30.0)
    bus.redis.set(key, f"recorder-a pid {os.getpid()} on {socket.gethostname()} #live", px=30_000)
    assert not lease.try_acquire()  # this very process holds it: alive
    bus.redis.set(key, f"recorder-a pid {dead_pid} on elsewhere #other-host", px=30_000)
    assert not lease.try_acquire()  # another host's pid proves nothing here
    bus.redis.set(key, f"recorder-a pid {dead_pid} on {socket.gethostname()} #dead", px=30_000)
    assert lease.try_acquire()  # killed -9 on this host: taken over without waiting 30 s
    assert bus.redis.get(key) == lease.token.encode()
    lease.release()


def test_writes_go_on_while_the_holder_renews_its_lock(buses) -> None:
    bus = buses[0]
    lease = ServiceLease(bus, "factor-update", "factor-update-a", ttl_s=0.3)  # renews each 0.1 s
    assert lease.try_acquire()
    written = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # a renewal lands between WATCH and EXEC now and then
        bus.publish("control", control(written))
        written += 1
    assert bus.topic_length("control") == written and not lease.lost.is_set()
    lease.release()
