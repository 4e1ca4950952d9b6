"""The rebalancer decides on exactly the decision bar, whatever order the streams deliver in,
one rebalance at a time, and its books follow the fills."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from engine.bus import MemoryBus
from engine.clock import SimulatedClock
from engine.config import PortfolioConfig, RiskConfig
from engine.events import (
    BarSet,
    Fill,
    OrderRequest,
    OrderUpdate,
    RebalanceDue,
    Signal,
    TargetPortfolio,
    make_event,
)
from services.daemons.rebalance import RebalanceService

T0 = datetime(2024, 3, 1, tzinfo=UTC)
SYMBOLS = ("A", "B", "C", "D")


def bars(close_time: datetime, closes: tuple[float, ...]) -> BarSet:
    return BarSet(
        bar_open=close_time - timedelta(days=1),
        symbols=SYMBOLS,
        open=closes,
        high=closes,
        low=closes,
        close=closes,
    )


def signal(asof: datetime, scores: tuple[float, ...]) -> Signal:
    return Signal(
        asof=asof, model="equal-weight", factor_weights={"f": 1.0}, symbols=SYMBOLS, scores=scores
    )


def tick(decision_time: datetime, name: str = "rb-1") -> RebalanceDue:
    return RebalanceDue(
        rebalance_id=name, schedule="test", due=decision_time, decision_time=decision_time
    )


class Harness:
    def __init__(self, top_fraction: float = 0.5) -> None:
        self.bus = MemoryBus()
        self.service = RebalanceService(
            self.bus,
            SimulatedClock(T0),
            PortfolioConfig(
                initial_cash=1000.0, top_fraction=top_fraction, construction="top-k", max_weight=1.0
            ),
            # The bookkeeping under test, not the limits (see test_rebalance_risk.py).
            RiskConfig(enabled=False, price_collar=0.0, max_data_age_bars=0.0),
        )
        self.orders = self.bus.consumer("probe", "p", ["orders", "targets"])

    def send(self, payload) -> None:
        self.service.handle(make_event(payload, source="test", ts=T0))

    def new_orders(self) -> list[OrderRequest]:
        return [
            d.event.payload
            for d in self.orders.read(1000)
            if isinstance(d.event.payload, OrderRequest)
        ]


def test_tick_before_its_bar_and_signal_waits_then_uses_the_decision_bar_prices():
    harness = Harness()
    harness.send(tick(T0))
    harness.send(bars(T0, (10.0, 20.0, 30.0, 40.0)))
    assert harness.new_orders() == []
    later = T0 + timedelta(days=1)
    harness.send(bars(later, (11.0, 22.0, 33.0, 44.0)))  # a later bar arrives first
    harness.send(signal(T0, (0.1, 0.9, 0.5, -1.0)))
    orders = harness.new_orders()
    assert [(o.symbol, o.side) for o in orders] == [
        ("B", "buy"),
        ("C", "buy"),
    ]  # equal values: by symbol
    by_symbol = {o.symbol: o for o in orders}
    assert by_symbol["B"].reference_price == 20.0 and by_symbol["B"].quantity == pytest.approx(
        500 / 20
    )
    assert by_symbol["C"].quantity == pytest.approx(500 / 30)
    assert all(o.asof == T0 and o.client_order_id == f"rb-1-{o.symbol}" for o in orders)


def test_tick_whose_signal_never_comes_is_skipped_with_a_warning():
    harness = Harness()
    harness.send(bars(T0, (10.0, 20.0, 30.0, 40.0)))
    harness.send(tick(T0))
    later = T0 + timedelta(days=1)
    with capture_logs() as logs:
        harness.send(bars(later, (10.0, 20.0, 30.0, 40.0)))
        harness.send(signal(later, (1.0, 0.0, 0.0, 0.0)))
    assert harness.new_orders() == []
    assert any(log["event"] == "rebalance.skipped" for log in logs)
    assert harness.service.pending == []


def test_next_rebalance_waits_until_every_order_of_the_last_has_ended():
    harness = Harness()
    harness.send(bars(T0, (10.0, 20.0, 30.0, 40.0)))
    harness.send(signal(T0, (1.0, 0.0, 0.0, 0.0)))
    harness.send(tick(T0, "rb-1"))
    first = harness.new_orders()
    assert [o.symbol for o in first] == ["A", "B"]
    later = T0 + timedelta(days=1)
    harness.send(bars(later, (10.0, 20.0, 30.0, 40.0)))
    harness.send(signal(later, (0.0, 0.0, 1.0, 2.0)))
    harness.send(tick(later, "rb-2"))
    assert harness.new_orders() == []  # rb-1 still open
    for order in first:
        harness.send(
            OrderUpdate(
                client_order_id=order.client_order_id,
                status="filled",
                filled_quantity=order.quantity,
                average_price=order.reference_price,
            )
        )
        assert harness.new_orders() == []  # terminal update alone is not enough: fills pending
    for order in first:
        harness.send(
            Fill(
                fill_id=f"f-{order.symbol}",
                client_order_id=order.client_order_id,
                symbol=order.symbol,
                side="buy",
                quantity=order.quantity,
                price=order.reference_price,
                fee=0.0,
                fee_currency="USDT",
                executed_at=T0,
            )
        )
    second = harness.new_orders()
    assert {o.rebalance_id for o in second} == {"rb-2"}
    assert [(o.symbol, o.side) for o in second][:2] == [("A", "sell"), ("B", "sell")]
    assert harness.service.book.cash == pytest.approx(0.0, abs=1e-9)


def test_target_portfolio_is_published_with_the_weights():
    harness = Harness(top_fraction=0.25)
    harness.send(bars(T0, (10.0, 20.0, 30.0, 40.0)))
    harness.send(signal(T0, (0.0, 0.0, 3.0, float("nan"))))
    harness.send(tick(T0))
    targets = [d.event.payload for d in harness.bus.consumer("t", "t", ["targets"]).read(10)]
    assert len(targets) == 1 and isinstance(targets[0], TargetPortfolio)
    # three scored assets: floor(0.25 * 3) = 0 holdings, all cash
    assert targets[0].weights == (0.0, 0.0, 0.0, 0.0) and targets[0].cash_weight == 1.0
    assert harness.new_orders() == []


def test_a_universe_too_small_for_top_fraction_warns_why_nothing_is_held():
    harness = Harness(top_fraction=0.5)
    harness.send(bars(T0, (10.0, 20.0, 30.0, 40.0)))
    harness.send(signal(T0, (1.0, float("nan"), float("nan"), float("nan"))))
    with capture_logs() as logs:
        harness.send(tick(T0))
    assert harness.new_orders() == []
    [warning] = [log for log in logs if log["event"] == "rebalance.nothing_selected"]
    assert warning["log_level"] == "warning" and warning["scored_assets"] == 1
    assert "top_fraction 0.5 of 1 scored assets rounds down to 0" in warning["reason"]


def test_a_rebalance_before_any_score_says_it_is_warming_up():
    harness = Harness(top_fraction=0.5)
    harness.send(bars(T0, (10.0, 20.0, 30.0, 40.0)))
    harness.send(signal(T0, (float("nan"),) * 4))
    with capture_logs() as logs:
        harness.send(tick(T0))
    [note] = [log for log in logs if log["event"] == "rebalance.nothing_selected"]
    assert note["log_level"] == "info" and note["scored_assets"] == 0
    assert "no asset has a score yet" in note["reason"]


def test_a_rebalance_that_holds_something_logs_no_reason():
    harness = Harness(top_fraction=0.5)
    harness.send(bars(T0, (10.0, 20.0, 30.0, 40.0)))
    harness.send(signal(T0, (1.0, 2.0, float("nan"), float("nan"))))
    with capture_logs() as logs:
        harness.send(tick(T0))
    assert [o.symbol for o in harness.new_orders()] == ["B"]
    assert not [log for log in logs if log["event"] == "rebalance.nothing_selected"]


# -- at-least-once delivery: every effect once, by its business id -------------------------------
def filled(order: OrderRequest, quantity: float | None = None, fill_id: str = "") -> Fill:
    return Fill(
        fill_id=fill_id or f"{order.client_order_id}-f1",
        client_order_id=order.client_order_id,
        symbol=order.symbol,
        side=order.side,
        quantity=order.quantity if quantity is None else quantity,
        price=order.reference_price,
        fee=0.0,
        fee_currency="USDT",
        executed_at=T0,
    )


def terminal(order: OrderRequest, quantity: float | None = None, **fields) -> OrderUpdate:
    return OrderUpdate(
        client_order_id=order.client_order_id,
        status=fields.pop("status", "filled"),
        filled_quantity=order.quantity if quantity is None else quantity,
        average_price=order.reference_price,
        **fields,
    )


class AuditedHarness(Harness):
    """A harness that also reads the portfolio topic and can deliver one event twice."""

    def __init__(self, top_fraction: float = 0.5) -> None:
        super().__init__(top_fraction)
        self.portfolio = self.bus.consumer("probe-portfolio", "p", ["portfolio"])

    def send_twice(self, payload) -> None:
        event = make_event(payload, source="test", ts=T0)
        self.service.handle(event)  # the same event id twice ...
        self.service.handle(event)
        self.send(payload)  # ... and under a new one, as a handler run again publishes it

    def snapshots(self) -> list:
        return [d.event.payload for d in self.portfolio.read(1000)]

    def first_rebalance(self) -> list[OrderRequest]:
        """rb-1 at T0 holds A and B at 500 each: 50 A at 10 and 25 B at 20."""
        self.send(bars(T0, (10.0, 20.0, 30.0, 40.0)))
        self.send(signal(T0, (1.0, 0.5, 0.0, -1.0)))
        self.send(tick(T0, "rb-1"))
        orders = self.new_orders()
        assert [(o.client_order_id, o.quantity) for o in orders] == [
            ("rb-1-A", pytest.approx(50.0)),
            ("rb-1-B", pytest.approx(25.0)),
        ]
        self.snapshots()
        return orders

    def queue_second_tick(self) -> None:
        later = T0 + timedelta(days=1)
        self.send(bars(later, (10.0, 20.0, 30.0, 40.0)))
        self.send(signal(later, (-1.0, 0.0, 0.5, 1.0)))
        self.send(tick(later, "rb-2"))


def test_a_fill_delivered_twice_is_booked_once_and_closes_its_order_once():
    harness = AuditedHarness()
    a, b = harness.first_rebalance()
    harness.queue_second_tick()
    harness.snapshots()
    with capture_logs() as logs:
        harness.send_twice(filled(a))
    assert [e["fill_id"] for e in logs if e["event"] == "fill.duplicate_ignored"] == [
        "rb-1-A-f1"
    ] * 2
    book = harness.service.book
    assert book.positions == {"A": pytest.approx(50.0)}
    assert book.cash == pytest.approx(500.0) and book.fills_applied == 1
    harness.send_twice(terminal(a))
    harness.send_twice(terminal(b))
    assert harness.new_orders() == []  # B's fill is still on its way
    harness.send_twice(filled(b))
    assert book.positions == {"A": pytest.approx(50.0), "B": pytest.approx(25.0)}
    assert book.cash == pytest.approx(0.0, abs=1e-9) and book.fills_applied == 2
    # The order table closed once: one post-trade snapshot, and rb-2 ran once.
    post_trade = [s for s in harness.snapshots() if s.fills_applied == 2]
    assert len(post_trade) == 1 and post_trade[0].cash == pytest.approx(0.0, abs=1e-9)
    assert {o.rebalance_id for o in harness.new_orders()} == {"rb-2"}
    assert harness.service.open_orders.keys() == {"rb-2-A", "rb-2-B", "rb-2-C", "rb-2-D"}


def test_a_duplicate_partial_fill_does_not_count_towards_its_order():
    harness = AuditedHarness()
    a, b = harness.first_rebalance()
    harness.queue_second_tick()
    harness.send(filled(b))
    harness.send(terminal(b))
    harness.send_twice(filled(a, 20.0, fill_id="rb-1-A-f1"))  # 20 of 50, delivered three times
    harness.send(terminal(a))
    # Counted three times the order would look done at 60 >= 50, and rb-2 would decide on a
    # book that lacks the rest of A.
    assert harness.new_orders() == [] and "rb-1-A" in harness.service.open_orders
    harness.send(filled(a, 30.0, fill_id="rb-1-A-f2"))
    assert harness.service.book.positions["A"] == pytest.approx(50.0)
    assert {o.rebalance_id for o in harness.new_orders()} == {"rb-2"}


def test_a_repeated_terminal_update_counts_once_and_a_late_one_is_ignored():
    harness = AuditedHarness()
    a, b = harness.first_rebalance()
    harness.queue_second_tick()
    harness.send_twice(terminal(a))
    with capture_logs() as logs:
        harness.send(terminal(a, 40.0, status="cancelled"))  # contradicts the first: kept first
    [conflict] = [e for e in logs if e["event"] == "order.conflicting_terminal_update"]
    assert conflict["kept_filled_quantity"] == pytest.approx(50.0)
    harness.send(filled(a, 40.0))
    assert "rb-1-A" in harness.service.open_orders  # 40 of the 50 the terminal update said
    harness.send(filled(a, 10.0, fill_id="rb-1-A-f2"))
    for payload in (terminal(b), filled(b)):
        harness.send(payload)
    assert {o.rebalance_id for o in harness.new_orders()} == {"rb-2"}
    # rb-1's updates delivered again once it is over change nothing, and do not crash.
    harness.snapshots()
    for payload in (terminal(a), terminal(b), terminal(b, status="rejected")):
        harness.send_twice(payload)
    assert harness.new_orders() == [] and harness.snapshots() == []
    assert harness.service.open_orders.keys() == {"rb-2-A", "rb-2-B", "rb-2-C", "rb-2-D"}


def test_a_terminal_update_for_an_unknown_order_changes_nothing():
    harness = AuditedHarness()
    harness.send(bars(T0, (10.0, 20.0, 30.0, 40.0)))
    harness.snapshots()
    harness.send(OrderUpdate(client_order_id="rb-0-X", status="filled", filled_quantity=3.0))
    harness.send(OrderUpdate(client_order_id="rb-0-Y", status="rejected", reason="no cash"))
    assert harness.service.open_orders == {} and harness.snapshots() == []
    assert harness.service.book.cash == 1000.0


def test_a_tick_delivered_again_while_its_orders_are_open_places_nothing():
    harness = AuditedHarness()
    a, b = harness.first_rebalance()
    with capture_logs() as logs:
        harness.send(tick(T0, "rb-1"))
    [done] = [e for e in logs if e["event"] == "rebalance.already_done"]
    assert done["rebalance_id"] == "rb-1"
    assert harness.new_orders() == [] and harness.service.pending == []
    harness.queue_second_tick()
    for payload in (terminal(a), filled(a), terminal(b), filled(b)):
        harness.send(payload)
    # rb-1 is not run again when its orders close: rb-2 runs, then nothing waits.
    assert {o.rebalance_id for o in harness.new_orders()} == {"rb-2"}
    assert harness.service.pending == []


def test_a_tick_delivered_again_after_it_ran_places_nothing_and_the_next_one_runs():
    harness = AuditedHarness()
    a, b = harness.first_rebalance()
    for payload in (terminal(a), filled(a), terminal(b), filled(b)):
        harness.send(payload)
    with capture_logs() as logs:
        harness.send(tick(T0, "rb-1"))
        harness.send(tick(T0 - timedelta(days=3), "rb-0"))  # older than one that ran: stale
    assert [e["rebalance_id"] for e in logs if e["event"] == "rebalance.already_done"] == [
        "rb-1",
        "rb-0",
    ]
    assert harness.new_orders() == []
    harness.queue_second_tick()
    assert {o.rebalance_id for o in harness.new_orders()} == {"rb-2"}
    assert harness.service.last_due == {"test": T0 + timedelta(days=1)}


def test_a_duplicate_of_a_waiting_tick_is_dropped():
    harness = AuditedHarness()
    with capture_logs() as logs:
        harness.send_twice(tick(T0, "rb-1"))  # waits: no bar and no signal yet
    assert [e["event"] for e in logs].count("rebalance.duplicate_tick") == 2
    assert [t.rebalance_id for t, _ in harness.service.pending] == ["rb-1"]
    harness.send(bars(T0, (10.0, 20.0, 30.0, 40.0)))
    harness.send(signal(T0, (1.0, 0.5, 0.0, -1.0)))
    assert [o.client_order_id for o in harness.new_orders()] == ["rb-1-A", "rb-1-B"]
    assert harness.service.pending == []


def test_a_tick_overtaken_by_a_later_one_of_its_schedule_is_not_run_after_it():
    harness = AuditedHarness()
    later = T0 + timedelta(days=1)
    harness.send(tick(later, "rb-2"))  # delivered first, waits for its bar
    harness.send(tick(T0, "rb-1"))
    harness.send(bars(T0, (10.0, 20.0, 30.0, 40.0)))
    harness.send(signal(T0, (1.0, 0.5, 0.0, -1.0)))
    assert harness.new_orders() == []  # one at a time, in arrival order: rb-2 first
    harness.send(bars(later, (10.0, 20.0, 30.0, 40.0)))
    with capture_logs() as logs:
        harness.send(signal(later, (-1.0, 0.0, 0.5, 1.0)))
    assert {o.rebalance_id for o in harness.new_orders()} == {"rb-2"}
    assert [e["rebalance_id"] for e in logs if e["event"] == "rebalance.already_done"] == ["rb-1"]
    assert harness.service.pending == []


def test_an_order_placed_again_counts_the_fills_booked_before_it():
    # A rebalancer restarted after publishing rb-1's orders but before acknowledging the tick:
    # the fills and updates of the first placement reach the new instance before the tick is
    # handed back. The broker answers the second placement with the order's state and does not
    # send its fills again, so the order must count the fills already booked.
    harness = AuditedHarness()
    harness.send(bars(T0, (10.0, 20.0, 30.0, 40.0)))
    harness.send(signal(T0, (1.0, 0.5, 0.0, -1.0)))
    first_a = OrderRequest(
        client_order_id="rb-1-A",
        rebalance_id="rb-1",
        asof=T0,
        symbol="A",
        side="buy",
        quantity=20.0,
        reference_price=10.0,
    )
    harness.send(filled(first_a))
    harness.send(terminal(first_a))
    assert harness.service.book.positions == {"A": 20.0}
    harness.send(tick(T0, "rb-1"))
    a, b = harness.new_orders()
    assert (a.client_order_id, a.quantity) == ("rb-1-A", pytest.approx(30.0))  # 50 held - 20
    harness.queue_second_tick()
    harness.send(
        OrderUpdate(
            client_order_id="rb-1-A",
            status="filled",
            filled_quantity=20.0,
            average_price=10.0,
            reason="duplicate submit: order already known",
        )
    )
    for payload in (terminal(b), filled(b)):
        harness.send(payload)
    assert harness.service.open_orders.keys() >= {"rb-2-A"}  # rb-1 closed, rb-2 placed
    assert {o.rebalance_id for o in harness.new_orders()} == {"rb-2"}


class FailingOnce:
    """Wraps a bus so that the next publish to ``topic`` raises once (Redis gone for good)."""

    def __init__(self, bus: MemoryBus, topic: str) -> None:
        self.publish_many = bus.publish_many
        self.topic = topic
        bus.publish_many = self  # type: ignore[method-assign]

    def __call__(self, topic, events):
        if topic == self.topic:
            self.topic = ""
            raise ConnectionError("bus unavailable")
        return self.publish_many(topic, events)


def test_a_tick_whose_orders_failed_to_go_out_runs_whole_when_handled_again():
    harness = AuditedHarness()
    harness.send(bars(T0, (10.0, 20.0, 30.0, 40.0)))
    harness.send(signal(T0, (1.0, 0.5, 0.0, -1.0)))
    FailingOnce(harness.bus, "orders")
    event = make_event(tick(T0, "rb-1"), source="test", ts=T0)
    with pytest.raises(ConnectionError):
        harness.service.handle(event)
    assert harness.new_orders() == [] and harness.service.open_orders == {}
    harness.service.handle(event)  # retried in place, or reclaimed later: the same delivery
    assert [o.client_order_id for o in harness.new_orders()] == ["rb-1-A", "rb-1-B"]
    assert harness.service.open_orders.keys() == {"rb-1-A", "rb-1-B"}


def test_a_fill_whose_post_trade_snapshot_failed_closes_its_order_when_handled_again():
    harness = AuditedHarness()
    a, b = harness.first_rebalance()
    harness.queue_second_tick()
    for payload in (terminal(a), filled(a), terminal(b)):
        harness.send(payload)
    harness.snapshots()
    FailingOnce(harness.bus, "portfolio")
    event = make_event(filled(b), source="test", ts=T0)
    with pytest.raises(ConnectionError):
        harness.service.handle(event)
    assert harness.new_orders() == []
    harness.service.handle(event)  # booked already: not again, but the order closes now
    assert harness.service.book.fills_applied == 2
    assert [s.fills_applied for s in harness.snapshots()] == [2]
    assert {o.rebalance_id for o in harness.new_orders()} == {"rb-2"}
