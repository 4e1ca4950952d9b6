"""Several signal instances in one consumer group: each snapshot's Signal is the one a single
instance computes, whichever member handles it and in whatever order (its history is read
from the ``factors`` stream up to the snapshot, not rebuilt from what the member was handed),
at the cost of one small range read per message; and every member follows the registry's
active model, also the ones a ``reload`` Control did not reach."""

from __future__ import annotations

import itertools

import msgspec
import pytest
import structlog

from engine.bus import ConsumerLoop, ConsumeSettings, MemoryBus
from engine.clock import SimulatedClock
from engine.config import FactorConfig
from engine.events import Control, Signal, make_event
from services.daemons.signal import SignalService
from services.runtime.loop import delivery_hook
from strategies.models.registry import ModelRegistry
from strategies.models.synthetic import FACTORS
from strategies.models.training import TrainSettings, fit
from tests.unit.services.test_signal_models import DATA, LOOKBACK, T0, snapshot

SNAPSHOTS = range(100, 124)
_readers = itertools.count()


def settings(**overrides: int) -> ConsumeSettings:
    values = dict(batch_size=1, block_ms=0, claim_idle_ms=0, reclaim_interval_ms=10**9)
    values.update(overrides)
    return ConsumeSettings(**values)  # type: ignore[arg-type]


class Member:
    """One signal instance: its service and its consume loop in the ``signal`` group."""

    def __init__(self, bus: MemoryBus, name: str, model: str = "trailing-ic", registry=None):
        self.service = SignalService(
            bus,
            SimulatedClock(T0),
            tuple(FactorConfig(name=f) for f in FACTORS),
            model=model,
            registry=registry,
            lookback=LOOKBACK,
            device="cpu",
        )
        self.service.start()
        consumer = bus.consumer("signal", name, self.service.topics)
        self.loop = ConsumerLoop(
            consumer,
            self.service.handle,
            settings(),
            on_delivery=delivery_hook(self.service),
        )


def publish(bus: MemoryBus, *payloads) -> None:
    for payload in payloads:
        bus.publish(payload.TOPIC, make_event(payload, source="test", corr="c", ts=T0))


def signals(bus: MemoryBus) -> list[Signal]:
    """Every Signal published so far, in publish order."""
    reader = bus.consumer(f"probe-{next(_readers)}", "p", ["signals"])
    return [d.event.payload for d in reader.read(10_000)]


def comparable(signal: Signal) -> tuple:
    # Everything but the inference time, which no two runs share.
    return msgspec.structs.astuple(msgspec.structs.replace(signal, latency_ms=0.0))


def by_asof(found: list[Signal]) -> list[tuple]:
    return [comparable(s) for s in sorted(found, key=lambda s: s.asof)]


def single_instance(model: str = "trailing-ic", registry=None) -> list[tuple]:
    bus = MemoryBus()
    member = Member(bus, "alone", model, registry)
    publish(bus, *(snapshot(t) for t in SNAPSHOTS))
    while member.loop.run_once(block_ms=0):
        pass
    return by_asof(signals(bus))


def test_two_members_splitting_the_snapshots_signal_as_one_instance_does():
    expected = single_instance()
    bus = MemoryBus()
    members = [Member(bus, "a"), Member(bus, "b")]
    publish(bus, *(snapshot(t) for t in SNAPSHOTS))
    handled = {"a": 0, "b": 0}
    for turn in range(len(SNAPSHOTS)):  # one snapshot each in turn
        name, member = ("a", members[0]) if turn % 2 == 0 else ("b", members[1])
        handled[name] += member.loop.run_once(block_ms=0)
    assert handled == {"a": len(SNAPSHOTS) // 2, "b": len(SNAPSHOTS) // 2}
    found = signals(bus)
    assert len(found) == len(SNAPSHOTS)
    assert by_asof(found) == expected
    assert not all(s.fallback for s in found)  # the model served: the history mattered


@pytest.mark.parametrize("late", [106, 117], ids=["far-back", "recent"])
def test_a_snapshot_reclaimed_from_a_dead_member_late_signals_as_in_order(late):
    expected = single_instance()
    bus = MemoryBus()
    dead = bus.consumer("signal", "dead", ["factors", "control"])
    live = Member(bus, "live")
    publish(bus, *(snapshot(t) for t in SNAPSHOTS))
    for t in SNAPSHOTS:
        if t == late:
            assert len(dead.read(1)) == 1  # read, never handled: the member died
        else:
            assert live.loop.run_once(block_ms=0) == 1
    assert len(signals(bus)) == len(SNAPSHOTS) - 1
    assert live.loop.reclaim() == 1  # the dead member's snapshot, after all the others
    assert by_asof(signals(bus)) == expected


def test_each_message_costs_one_range_read_of_the_rows_the_member_lacks():
    bus = MemoryBus()
    alone = Member(bus, "alone")
    publish(bus, *(snapshot(t) for t in SNAPSHOTS))
    while alone.loop.run_once(block_ms=0):
        pass
    history = alone.service._history
    assert (history.reads, history.decoded) == (len(SNAPSHOTS), len(SNAPSHOTS))
    bus = MemoryBus()
    members = [Member(bus, "a"), Member(bus, "b")]
    publish(bus, *(snapshot(t) for t in SNAPSHOTS))
    for turn in range(len(SNAPSHOTS)):
        members[turn % 2].loop.run_once(block_ms=0)
    for member in members:  # each row decoded once per member, not lookback times
        history = member.service._history
        assert history.reads == len(SNAPSHOTS) // 2
        assert history.decoded <= len(SNAPSHOTS)


def test_a_snapshot_handled_without_its_delivery_is_refused():
    service = Member(MemoryBus(), "a").service
    event = make_event(snapshot(100), source="test", ts=T0)
    with pytest.raises(RuntimeError, match="without its delivery"):
        service.handle(event)


def test_a_member_the_reload_did_not_reach_serves_the_newly_active_model(tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    train = TrainSettings(lookback=LOOKBACK, hidden=8, epochs=2, min_train=50, device="cpu")
    first, _ = fit("lstm", DATA, DATA.usable_before(90), train)
    registry.save("lstm", first, training={}, metrics={}, activate=True)
    bus = MemoryBus()
    members = [Member(bus, name, "lstm", registry.root) for name in ("a", "b")]
    publish(bus, *(snapshot(t) for t in range(100, 108)))
    for turn in range(8):
        members[turn % 2].loop.run_once(block_ms=0)
    old = registry.active("lstm")
    assert {s.model for s in signals(bus)[-2:]} == {old}
    second, _ = fit("lstm", DATA, DATA.usable_before(120), train)
    new = registry.save("lstm", second, training={}, metrics={}, activate=True)
    publish(bus, Control(command="reload", reason="retrained"))
    assert members[0].loop.run_once(block_ms=0) == 1  # one member of the group gets it
    publish(bus, snapshot(108), snapshot(109))
    with structlog.testing.capture_logs() as logs:
        assert members[1].loop.run_once(block_ms=0) == 1
        assert members[0].loop.run_once(block_ms=0) == 1
    latest = signals(bus)[-2:]
    assert [s.model for s in latest] == [new, new] and not any(s.fallback for s in latest)
    changed = [e for e in logs if e["event"] == "signal.active_changed"]
    assert [(e["served"], e["active"]) for e in changed] == [(old, new)]
