"""An OrderRequest delivered again (the bus delivers at least once, and a handler run again
publishes under a new event id) trades nothing: execution passes on the broker's answer, the
order's current state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from brokers.simulated import DUPLICATE_SUBMIT, SimulatedBroker
from engine.bus import MemoryBus
from engine.clock import SimulatedClock
from engine.events import BarSet, Control, Fill, OrderRequest, OrderUpdate, make_event
from services.daemons.execution import ExecutionService

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def bars(n: int, price: float) -> BarSet:
    """Daily bar opening at day ``n`` with every price at ``price``."""
    return BarSet(
        bar_open=T0 + timedelta(days=n),
        symbols=("BTC/USDT",),
        open=(price,),
        high=(price,),
        low=(price,),
        close=(price,),
    )


REQUEST = OrderRequest(
    client_order_id="rb-1-BTC/USDT",
    rebalance_id="rb-1",
    asof=T0 + timedelta(days=1),
    symbol="BTC/USDT",
    side="buy",
    quantity=2.0,
    reference_price=100.0,
)


class Harness:
    def __init__(self, fill_price: str = "next_open") -> None:
        self.bus = MemoryBus()
        self.broker = SimulatedBroker(initial_cash=1_000.0, fee_rate=0.0, fill_price=fill_price)
        self.service = ExecutionService(self.bus, SimulatedClock(T0), self.broker)
        self.out = self.bus.consumer("probe", "p", ["order_updates", "fills"])

    def send(self, payload) -> None:
        self.service.handle(make_event(payload, source="test", ts=T0))

    def published(self) -> tuple[list[OrderUpdate], list[Fill]]:
        events = [d.event.payload for d in self.out.read(1000)]
        return (
            [e for e in events if isinstance(e, OrderUpdate)],
            [e for e in events if isinstance(e, Fill)],
        )


def test_a_request_handled_again_after_its_fill_answers_filled_and_trades_nothing():
    harness = Harness(fill_price="close")
    harness.send(bars(0, 100.0))  # closes at REQUEST.asof: fills at once at 100
    event = make_event(REQUEST, source="rebalance", ts=T0)
    harness.service.handle(event)
    updates, fills = harness.published()
    assert [u.status for u in updates] == ["accepted", "filled"] and len(fills) == 1
    harness.service.handle(event)  # the handler run again on the same delivery
    harness.send(REQUEST)  # the request published again under a new event id
    updates, fills = harness.published()
    assert fills == []
    assert [(u.status, u.filled_quantity, u.average_price, u.reason) for u in updates] == [
        ("filled", 2.0, 100.0, DUPLICATE_SUBMIT)
    ] * 2
    assert harness.broker.positions == {"BTC/USDT": 2.0}
    assert harness.broker.cash == 800.0


def test_a_request_handled_again_while_queued_stays_one_order():
    harness = Harness()
    harness.send(REQUEST)
    harness.send(REQUEST)
    updates, fills = harness.published()
    assert [(u.status, u.reason) for u in updates] == [
        ("accepted", None),
        ("accepted", DUPLICATE_SUBMIT),
    ]
    assert fills == [] and harness.broker.open_order_count == 1
    harness.send(bars(1, 110.0))  # the next bar: fills once, at its open
    updates, fills = harness.published()
    assert [(f.fill_id, f.quantity, f.price) for f in fills] == [("rb-1-BTC/USDT-f1", 2.0, 110.0)]
    assert [(u.status, u.filled_quantity) for u in updates] == [("filled", 2.0)]
    assert harness.broker.positions == {"BTC/USDT": 2.0} and harness.broker.cash == 780.0


def test_a_request_refused_while_halted_is_refused_again_after_resume():
    harness = Harness(fill_price="close")
    harness.send(bars(0, 100.0))
    harness.send(Control(command="halt", reason="operator"))
    harness.send(REQUEST)
    harness.send(Control(command="resume"))
    harness.send(REQUEST)  # delivered again once trading resumed: it was refused, it stays so
    updates, fills = harness.published()
    assert [(u.status, u.reason) for u in updates] == [
        ("rejected", "trading halted"),
        ("rejected", f"{DUPLICATE_SUBMIT}; trading halted"),
    ]
    assert fills == [] and harness.broker.cash == 1_000.0


def test_a_filled_request_delivered_while_halted_reports_filled_not_rejected():
    harness = Harness(fill_price="close")
    harness.send(bars(0, 100.0))
    harness.send(REQUEST)
    harness.published()
    harness.send(Control(command="halt", reason="operator"))
    harness.send(REQUEST)
    updates, fills = harness.published()
    assert [(u.status, u.filled_quantity) for u in updates] == [("filled", 2.0)] and fills == []
