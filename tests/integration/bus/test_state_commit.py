"""A group's state snapshot travels with its acknowledgements, on both buses: ``commit`` writes
it in the same atomic step, ``load_state`` gives it back, the consume loop asks the service for
it after each applied message (or batch), and the backtest's pump never does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from engine.bus import Bus, ConsumerLoop, ConsumeSettings, MemoryBus, RedisBus, redis_streams
from engine.bus import keys as bus_keys
from engine.clock import SimulatedClock
from engine.events import Envelope, Heartbeat
from services.runtime.loop import Pump, Service
from tests.events import T0, heartbeat


@pytest.fixture(params=["memory", "redis"])
def bus(request: pytest.FixtureRequest) -> Iterator[Bus]:
    if request.param == "memory":
        yield MemoryBus()
        return
    redis_bus = RedisBus(
        request.getfixturevalue("redis_url"),
        request.getfixturevalue("namespace"),
        give_up_after_s=5,
    )
    yield redis_bus
    redis_bus.close()


def settings(**overrides: Any) -> ConsumeSettings:
    values: dict[str, Any] = dict(
        batch_size=10, block_ms=0, claim_idle_ms=60_000, reclaim_interval_ms=60_000
    )
    values.update(overrides)
    return ConsumeSettings(retry_backoff_s=0, **values)


def test_commit_with_state_acks_and_stores_it_and_load_state_returns_the_last(bus):
    assert bus.load_state("svc") is None
    bus.publish_many("alpha", [heartbeat(i) for i in range(3)])
    consumer = bus.consumer("svc", "svc-1", ["alpha"])
    first, second, third = consumer.read(10)
    consumer.commit([first], b"\x00state-1")
    assert bus.load_state("svc") == b"\x00state-1"
    assert consumer.pending_count() == 2
    consumer.commit([second])  # no state: the last one stays
    assert bus.load_state("svc") == b"\x00state-1"
    consumer.commit([third], b"state-3")
    assert bus.load_state("svc") == b"state-3"
    assert consumer.pending_count() == 0
    assert bus.load_state("other") is None
    # Applied: the events are marked processed with the same commit.
    assert consumer.already_processed([d.event.id for d in (first, second, third)]) == [True] * 3


def test_redis_writes_the_state_in_the_same_transaction_as_the_ack(
    redis_url, namespace, monkeypatch
):
    bus = RedisBus(redis_url, namespace, give_up_after_s=5)
    bus.publish("alpha", heartbeat(1))
    consumer = bus.consumer("svc", "svc-1", ["alpha"])
    (delivery,) = consumer.read(10)
    sent: list[list[tuple]] = []
    exchange = redis_streams._exchange

    def spy(connection, commands):  # what goes on the wire, one write per call
        sent.append(list(commands))
        return exchange(connection, commands)

    monkeypatch.setattr(redis_streams, "_exchange", spy)
    consumer.commit([delivery], b"blob")
    (batch,) = sent
    names = [command[0] for command in batch]
    assert names == ["MULTI", "ZADD", "ZREMRANGEBYSCORE", "XACK", "SET", "EXEC"]
    assert batch[4] == ("SET", bus_keys.state(namespace, "svc"), b"blob")
    assert bus.redis.get(f"{namespace}:state:svc") == b"blob"
    bus.close()


def test_consumed_history_without_a_count_returns_everything_acknowledged(bus):
    bus.publish_many("alpha", [heartbeat(i) for i in range(300)])
    consumer = bus.consumer("svc", "svc-1", ["alpha"])
    deliveries = consumer.read(1000)
    consumer.commit(deliveries[:-5])
    history = bus.consumed_history("svc", "alpha", None)
    assert [e.payload.processed for e in history] == list(range(295))


class Counter(Service):
    """Counts heartbeats; its state is the count, as text."""

    name = "counter"

    def __init__(self, bus: Bus) -> None:
        self.count = 0
        self.snapshots = 0
        super().__init__(bus, SimulatedClock(T0))

    def handlers(self):
        return {Heartbeat: self.on_heartbeat}

    def on_heartbeat(self, event: Envelope) -> None:
        if event.payload.processed < 0:
            raise ValueError("negative")
        self.count += 1

    def snapshot_state(self) -> bytes:
        self.snapshots += 1
        return str(self.count).encode()

    def restore_state(self, blob: bytes) -> None:
        self.count = int(blob)


@pytest.mark.parametrize("commit_each", [True, False])
def test_the_loop_commits_the_state_after_each_message_or_batch(bus, commit_each):
    service = Counter(bus)
    consumer = bus.consumer("counter", "counter-1", ["heartbeat"])
    loop = ConsumerLoop(
        consumer,
        service.handle,
        settings(commit_each_message=commit_each, batch_size=4),
        snapshot=service.snapshot_state,
    )
    bus.publish_many("heartbeat", [heartbeat(i) for i in range(6)])
    loop.run_once(block_ms=0)
    assert service.snapshots == (4 if commit_each else 1)
    assert bus.load_state("counter") == b"4"
    loop.run_once(block_ms=0)
    assert bus.load_state("counter") == b"6"
    assert consumer.pending_count() == 0


def test_a_message_that_fails_for_good_commits_no_state_of_its_own(bus):
    service = Counter(bus)
    consumer = bus.consumer("counter", "counter-1", ["heartbeat"])
    loop = ConsumerLoop(
        consumer,
        service.handle,
        settings(commit_each_message=True, max_deliveries=2),
        snapshot=service.snapshot_state,
    )
    bus.publish_many("heartbeat", [heartbeat(0), heartbeat(-1)])
    loop.run_once(block_ms=0)
    assert bus.load_state("counter") == b"1"  # the dead-lettered one wrote nothing
    assert len(bus.dead_letters()) == 1
    bus.publish("heartbeat", heartbeat(2))
    loop.run_once(block_ms=0)
    assert bus.load_state("counter") == b"2"


def test_the_backtest_pump_never_takes_a_snapshot():
    bus = MemoryBus()
    service = Counter(bus)
    pump = Pump([service])
    bus.publish_many("heartbeat", [heartbeat(i) for i in range(5)])
    pump.pump()
    assert service.count == 5
    assert service.snapshots == 0
    assert bus.load_state("counter") is None
