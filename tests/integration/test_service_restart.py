"""A stateful service killed at any point and started again resumes with exactly the state it
had at its last commit, and ends exactly where an uninterrupted run ends.

Each test feeds the rebalancer or the execution service the events it handled in a whole
backtest, one at a time, through its real ``ServiceRunner`` loop, on the Redis bus and on the
in-memory bus. The process dies (see ``tests/restarts.py``) at chosen points: before a message
(a stop after the one before) or after its handler emitted, before the commit. A new service
object with the same instance name then restores the committed snapshot and reads its own
pending message first. Checked: the restored state is byte for byte the last committed one; the
final state, the ledger (each order once per client order id, each fill once per fill id, one
terminal state per order) and the equity are those of the uninterrupted run. What a handler
emits waits in the service's outbox and goes out with the commit, so a death between the
handler and its commit publishes nothing twice: the outputs equal the uninterrupted run's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from engine.bus import Bus, MemoryBus, RedisBus
from engine.events import (
    BarBlock,
    BarSet,
    Control,
    Envelope,
    Fill,
    OrderRequest,
    OrderUpdate,
    PortfolioSnapshot,
    RebalanceDue,
    Signal,
)
from services.commands.backtest import Backtest
from services.daemons.rebalance import RebalanceState
from services.runtime.quiescence import RedisQuiescence
from tests.audit import Ledger, terminal_updates_per_order, unique_fills
from tests.conftest import delete_namespace
from tests.restarts import (
    Restarted,
    drive,
    handled_events,
    make_execution,
    make_rebalance,
    small_config,
    small_panel,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=["next_open", "close"])
def scripts(request) -> tuple[str, dict[str, list[Envelope]]]:
    """The events the rebalancer and the execution service handled in a whole backtest."""
    handled = handled_events(
        Backtest(small_config(request.param), small_panel()), ["rebalance", "execution"]
    )
    return request.param, handled


@pytest.fixture(params=["memory", "redis"])
def new_bus(request) -> Iterator[Callable[[], Bus]]:
    """Return a function giving a fresh, empty bus of the parametrised kind."""
    if request.param == "memory":
        yield MemoryBus
        return
    redis_url = request.getfixturevalue("redis_url")
    made: list[RedisBus] = []

    def make() -> Bus:
        bus = RedisBus(redis_url, f"test-{uuid.uuid4().hex[:12]}", give_up_after_s=5)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.close()
        delete_namespace(redis_url, bus.namespace)


def published(bus: Bus, topic: str) -> list:
    consumer = bus.consumer("auditor", "auditor-1", [topic])
    out = []
    while deliveries := consumer.read(10_000):
        out += [d.event.payload for d in deliveries]
        consumer.ack(deliveries)
    return out


def first_copies(items: list, key: Callable) -> list:
    """``items`` at each key's first appearance, after checking every repeat is identical."""
    first: dict = {}
    for item in items:
        assert first.setdefault(key(item), item) == item, "published again, but different"
    return list(first.values())


def index_of(events: list[Envelope], test: Callable[[Envelope], bool], start: int = 0) -> int:
    return next(i for i in range(start, len(events)) if test(events[i]))


def check_restarts(run: Restarted, expected_restarts: int) -> None:
    assert run.restarts == expected_restarts
    # What the new object holds is, byte for byte, what the dead one last committed.
    assert run.restored == run.committed
    assert run.loaded == run.committed


# -- rebalance ------------------------------------------------------------------------------
def rebalance_points(events: list[Envelope]) -> list[int]:
    """Where to die: the first tick that traded, the first fill, order update, bar, signal and
    block after it, and the final halt."""
    coids = [e.payload.client_order_id for e in events if isinstance(e.payload, Fill)]
    traded = index_of(
        events,
        lambda e: (
            isinstance(e.payload, RebalanceDue)
            and any(c.startswith(e.payload.rebalance_id) for c in coids)
        ),
    )
    points = {traded, len(events) - 1}
    for kind in (Fill, OrderUpdate, BarSet, Signal, BarBlock):
        found = [i for i in range(traded, len(events)) if isinstance(events[i].payload, kind)]
        if found:
            points.add(found[0])
    assert isinstance(events[-1].payload, Control)
    return sorted(points)


@pytest.mark.parametrize("death", ["before", "after"])
def test_rebalance_killed_anywhere_resumes_its_state_and_ends_like_the_uninterrupted_run(
    scripts, new_bus, death
):
    fill_price, handled = scripts
    events = handled["rebalance"]
    points = rebalance_points(events)
    reference_bus = new_bus()
    reference = drive(reference_bus, make_rebalance(fill_price), events)
    bus = new_bus()
    crashes = {"crash_before": points} if death == "before" else {"crash_after": points}
    run = drive(bus, make_rebalance(fill_price), events, **crashes)

    check_restarts(run, len(points))
    final = run.service.snapshot_state()
    assert final == reference.service.snapshot_state()
    state = msgspec.msgpack.decode(final, type=RebalanceState)
    assert state.book.fills_applied == len(
        unique_fills([e.payload for e in events if e.type == "Fill"])
    )

    orders, expected_orders = published(bus, "orders"), published(reference_bus, "orders")
    assert first_copies(orders, lambda o: o.client_order_id) == expected_orders
    snapshots = [p for p in published(bus, "portfolio") if isinstance(p, PortfolioSnapshot)]
    expected = [
        p for p in published(reference_bus, "portfolio") if isinstance(p, PortfolioSnapshot)
    ]
    assert snapshots[-1] == expected[-1]  # equity, cash, positions, high-water mark
    # Even the tick that died after its handler emitted its orders sent them once: the
    # emits waited for the commit that never came, and the tick run again sent them.
    assert orders == expected_orders


# -- execution ------------------------------------------------------------------------------
def execution_points(events: list[Envelope]) -> list[int]:
    """Where to die: the first order and one in the middle of its rebalance, the first bar
    after it (next_open fills there), an order of the last rebalance, and the final halt."""
    orders = [i for i, e in enumerate(events) if isinstance(e.payload, OrderRequest)]
    bar = index_of(events, lambda e: isinstance(e.payload, (BarSet, BarBlock)), orders[0])
    assert isinstance(events[-1].payload, Control)
    return sorted({orders[0], orders[1], bar, orders[-1], len(events) - 1})


@pytest.mark.parametrize("death", ["before", "after"])
def test_execution_killed_anywhere_resumes_its_account_and_ends_like_the_uninterrupted_run(
    scripts, new_bus, death
):
    fill_price, handled = scripts
    events = handled["execution"]
    points = execution_points(events)
    reference_bus = new_bus()
    reference = drive(reference_bus, make_execution(fill_price), events)
    bus = new_bus()
    crashes = {"crash_before": points} if death == "before" else {"crash_after": points}
    run = drive(bus, make_execution(fill_price), events, **crashes)

    check_restarts(run, len(points))
    assert run.service.snapshot_state() == reference.service.snapshot_state()
    broker, expected_broker = run.service.broker, reference.service.broker
    assert (broker.cash, broker.positions) == (expected_broker.cash, expected_broker.positions)

    fills, expected_fills = published(bus, "fills"), published(reference_bus, "fills")
    assert first_copies(fills, lambda f: f.fill_id) == expected_fills
    updates = published(bus, "order_updates")
    expected_updates = published(reference_bus, "order_updates")
    assert list(dict.fromkeys(updates)) == list(dict.fromkeys(expected_updates))
    requests = [e.payload for e in events if isinstance(e.payload, OrderRequest)]
    counts = terminal_updates_per_order(Ledger(orders=requests, updates=updates))
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
    # Each order was executed once: accepted once, whatever was published again.
    accepted = [u.client_order_id for u in dict.fromkeys(updates) if u.status == "accepted"]
    assert len(accepted) == len(set(accepted)) == len({r.client_order_id for r in requests})
    assert (fills, updates) == (expected_fills, expected_updates)  # nothing went out twice


# -- a real process, SIGKILLed -------------------------------------------------------------
@pytest.mark.parametrize("service_name", ["rebalance", "execution"])
def test_a_process_sigkilled_between_its_publish_and_its_commit_resumes_exactly(
    scripts, redis_url, service_name
):
    """The service runs in its own process and dies by SIGKILL right after the handler of the
    first tick that traded (rebalance) or of the first order (execution) returned. A new
    process of the same instance restores the state committed before that message, handles it
    again first, and the run ends as the uninterrupted one."""
    fill_price, handled = scripts
    events = handled[service_name]
    if service_name == "rebalance":
        make, kill_at = make_rebalance(fill_price), rebalance_points(events)[0]
    else:
        make, kill_at = make_execution(fill_price), execution_points(events)[0]
    buses = [
        RedisBus(redis_url, f"test-{uuid.uuid4().hex[:12]}", give_up_after_s=5) for _ in range(3)
    ]
    bus, before_kill, reference_bus = buses
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.service_process",
            service_name,
            fill_price,
            redis_url,
            bus.namespace,
            events[kill_at].id,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        quiet = RedisQuiescence(bus, [(service_name, make(MemoryBus()).topics)])
        for event in events[: kill_at + 1]:
            bus.publish(event.topic, event)
            deadline = time.monotonic() + 60
            while not quiet.caught_up() and child.poll() is None:
                assert time.monotonic() < deadline, "the service process did not catch up"
                time.sleep(0.005)
        assert child.wait(30) == -signal.SIGKILL
        # It died holding the message: its effects were staged, never published, and its
        # state and ack were not committed.
        pending = bus.redis.xpending(f"{bus.namespace}:{events[kill_at].topic}", service_name)
        assert pending["pending"] == 1
        committed_before = drive(before_kill, make, events[:kill_at]).service.snapshot_state()
        assert bus.load_state(service_name) == committed_before

        run = drive(bus, make, events, first=kill_at + 1)
        reference = drive(reference_bus, make, events)
        assert run.started_from == committed_before
        assert run.service.snapshot_state() == reference.service.snapshot_state()
        topic = "orders" if service_name == "rebalance" else "order_updates"
        again, expected = published(bus, topic), published(reference_bus, topic)
        assert again == expected  # the killed handler's effects went out once, when re-run
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        for each in buses:
            each.close()
            delete_namespace(redis_url, each.namespace)
