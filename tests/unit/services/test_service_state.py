"""Snapshots of the stateful services restore exactly: a service replaced after every single
message by a new object restored from its snapshot publishes what the original publishes and
ends in the same state. Also: what is deliberately left out (``halted``), what is bounded, what
the runner logs, what a snapshot of another layout version does, and the recorder's rebuild."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import msgspec
import pytest
from structlog.testing import capture_logs

from brokers.simulated import SimulatedBroker
from engine.bus import ConsumeSettings, MemoryBus
from engine.clock import SimulatedClock
from engine.data import synthetic_panel
from engine.events import Control, Envelope, OrderRequest, make_event
from services.commands.backtest import Backtest
from services.daemons.portfolio import FILL_IDS_KEPT
from services.daemons.rebalance import RebalanceService, RebalanceState
from services.daemons.recorder import RecorderService
from services.runtime.loop import Service, ServiceRunner, StateError
from tests.events import T0
from tests.restarts import (
    handled_events,
    make_execution,
    make_rebalance,
    small_config,
    small_panel,
)


@pytest.fixture(scope="module", params=["next_open", "close"])
def scripts(request):
    handled = handled_events(
        Backtest(small_config(request.param), small_panel()), ["rebalance", "execution"]
    )
    return request.param, handled


def outputs(bus: MemoryBus, topics: list[str]) -> list:
    consumer = bus.consumer("probe", "probe-1", topics)
    return [d.event.payload for d in consumer.read(1_000_000)]


def run(make: Callable[[MemoryBus], Service], events: list[Envelope], replace_each: bool):
    """Hand ``events`` to a service; with ``replace_each``, after every event the service is
    replaced by a new object restored from its snapshot (what a restart after it gives)."""
    bus = MemoryBus()
    service = make(bus)
    # Through the bus, so that a restored service's ``start`` finds what its group consumed
    # (the rebalancer rebuilds its trailing closes from it).
    consumer = bus.consumer(service.name, "probe", service.topics)
    for event in events:
        bus.publish(event.topic, event)
        deliveries = consumer.read(1)
        service.handle(deliveries[0].event)
        consumer.ack(deliveries)
        if replace_each:
            blob = service.snapshot_state()
            assert blob is not None
            service = make(bus)
            service.restore_state(blob)
            service.start()
            assert service.snapshot_state() == blob
    return service, bus


@pytest.mark.parametrize(
    "service, topics",
    [("rebalance", ["targets", "orders", "portfolio"]), ("execution", ["order_updates", "fills"])],
)
def test_a_service_restored_after_every_message_behaves_as_the_one_never_restarted(
    scripts, service, topics
):
    fill_price, handled = scripts
    make = make_rebalance(fill_price) if service == "rebalance" else make_execution(fill_price)
    events = handled[service]
    expected, expected_bus = run(make, events, replace_each=False)
    restored, bus = run(make, events, replace_each=True)
    assert outputs(bus, topics) == outputs(expected_bus, topics)
    assert restored.snapshot_state() == expected.snapshot_state()


def test_halted_is_not_part_of_the_state():
    bus = MemoryBus()
    service = make_rebalance("next_open")(bus)
    service.handle(make_event(Control(command="halt", reason="end of data"), source="test"))
    assert service.halted
    again = make_rebalance("next_open")(bus)
    again.restore_state(service.snapshot_state())
    assert not again.halted  # a resumed run trades again


def test_a_snapshot_of_another_layout_version_is_refused_naming_both():
    bus = MemoryBus()
    service = make_rebalance("next_open")(bus)
    state = msgspec.msgpack.decode(service.snapshot_state(), type=RebalanceState)
    newer = msgspec.msgpack.encode(msgspec.structs.replace(state, version=state.version + 1))
    with pytest.raises(
        StateError, match="rebalance: .*layout version 3, this build reads version 2"
    ):
        make_rebalance("next_open")(bus).restore_state(newer)
    with pytest.raises(StateError, match="execution: the committed state is unreadable"):
        make_execution("next_open")(bus).restore_state(b"\xc1 not msgpack")


def test_the_book_keeps_a_bounded_window_of_fill_ids_and_restores_it(scripts):
    fill_price, handled = scripts
    service, _ = run(make_rebalance(fill_price), handled["rebalance"], replace_each=False)
    ids = service.book.state().fill_ids
    assert 0 < len(ids) <= FILL_IDS_KEPT
    service.book.fill_ids_kept = 3
    state = service.book.state()
    other = make_rebalance(fill_price)(MemoryBus())
    other.book.fill_ids_kept = 3
    other.book.restore(state, service._last_index)
    assert other.book.state().fill_ids == ids[-3:]


def order(n: int, asof=T0) -> OrderRequest:
    return OrderRequest(
        client_order_id=f"o-{n}",
        rebalance_id="rb",
        asof=asof,
        symbol="A",
        side="buy",
        quantity=1.0,
    )


def test_the_broker_forgets_the_oldest_terminal_orders_beyond_its_bound_never_open_ones():
    broker = SimulatedBroker(initial_cash=1e6, orders_kept=3)
    broker.submit(order(0))  # queued: no bar yet, stays open
    for n in range(1, 6):
        broker.reject(order(n), "halted")  # terminal at once
    state = broker.state()
    assert [o.client_order_id for o in state.orders] == ["o-0", "o-4", "o-5"]
    assert state.queued == ["o-0"]
    # A forgotten order would trade again; a kept one is answered with its state.
    assert broker.submit(order(5))[0].reason.startswith("duplicate submit")
    restored = SimulatedBroker(initial_cash=1.0, orders_kept=3)
    restored.restore_state(state)
    assert restored.state() == state
    assert restored.open_order_count == 1
    assert restored.submit(order(0))[0].status == "accepted"  # the duplicate's answer


def test_the_recorder_rebuilt_from_its_consumed_history_writes_the_same_summary(tmp_path):
    backtest = Backtest(small_config(), small_panel())
    summary = backtest.run(tmp_path / "first")
    rebuilt = RecorderService(backtest.bus, backtest.clock)
    with capture_logs() as logs:
        rebuilt.start()
    assert any(log["event"] == "recorder.rebuilt" for log in logs)
    again = rebuilt.summary(
        small_config().portfolio.initial_cash,
        small_panel().periods_per_year(),
        backtest.market.bars_published,
    )
    # The run adds what the signal service served (model, signal_fallbacks): not the recorder's.
    assert again == {k: v for k, v in summary.items() if k not in ("model", "signal_fallbacks")}
    again = summary
    rebuilt.write(tmp_path / "second", again)
    for name in ("summary.json", "equity.csv"):
        assert (tmp_path / "second" / name).read_text() == (tmp_path / "first" / name).read_text()


def test_the_runner_restores_before_start_and_logs_what_it_restored():
    bus = MemoryBus()
    settings = ConsumeSettings(block_ms=0, commit_each_message=True)
    first = ServiceRunner(make_rebalance("next_open")(bus), settings, instance="box-1")
    with capture_logs() as logs:
        first.start()
    assert [log["event"] for log in logs] == ["service.state_empty"]
    service = first.service
    assert isinstance(service, RebalanceService)
    bus.publish(
        "control",
        make_event(Control(command="resume"), source="test", ts=T0 + timedelta(days=1)),
    )
    first.loop.run_once(block_ms=0)
    assert bus.load_state("rebalance") == service.snapshot_state()

    second = ServiceRunner(make_rebalance("next_open")(bus), settings, instance="box-1")
    with capture_logs() as logs:
        second.start()
    (restored,) = [log for log in logs if log["event"] == "service.state_restored"]
    assert restored["cash"] == small_config().portfolio.initial_cash
    assert {"bytes", "positions", "open_orders", "waiting_ticks", "last_bar"} <= set(restored)
    assert second.service.snapshot_state() == service.snapshot_state()


def test_stateless_services_neither_load_nor_snapshot():
    bus = MemoryBus()
    runner = ServiceRunner(RecorderService(bus, SimulatedClock(T0)), ConsumeSettings(block_ms=0))
    assert runner.loop.snapshot is None
    with capture_logs() as logs:
        assert runner.restore() is False
    assert logs == []


def test_a_500_symbol_rebalancer_snapshot_stays_small():
    """Size only (no timing here): a whole run's state of a 500-symbol universe, with 16 bars
    and signals kept, ~150 holdings and thousands of fills booked."""
    backtest = Backtest(small_config(), synthetic_panel(500, 120, seed=3))
    backtest.run()
    blob = backtest.services.rebalance.snapshot_state()
    state = msgspec.msgpack.decode(blob, type=RebalanceState)
    assert len(state.bars) == len(state.signals) == 16
    assert len(state.universes) == 1  # bars and signals share one stored symbol list
    assert len(blob) < 600_000
