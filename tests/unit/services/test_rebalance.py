"""The rebalancer decides on exactly the decision bar, whatever order the streams deliver in,
one rebalance at a time, and its books follow the fills."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from engine.bus import MemoryBus
from engine.clock import SimulatedClock
from engine.config import PortfolioConfig
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
from services.rebalance import RebalanceService

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
            PortfolioConfig(initial_cash=1000.0, top_fraction=top_fraction),
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
