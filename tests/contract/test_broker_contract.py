"""The broker contract: what the execution service relies on, checked against every adapter
(the paper broker, and ccxt's real Binance class over recorded exchange responses).

Every order ends in exactly one terminal state; a client order id trades at most once,
restarts included; the account moves by exactly what the fills say; what is refused says why.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

from brokers.protocol import Broker
from engine.events import TERMINAL_ORDER_STATUSES, Fill, OrderUpdate
from tests.contract.venue import Venue


def fills(events) -> list[Fill]:
    return [e for e in events if isinstance(e, Fill)]


def terminal(events) -> list[OrderUpdate]:
    return [e for e in events if isinstance(e, OrderUpdate) and e.status in TERMINAL_ORDER_STATUSES]


def test_the_adapter_is_a_broker(venue: Venue):
    assert isinstance(venue.broker, Broker)
    balances = venue.broker.balances()
    assert balances.cash == pytest.approx(venue.cash) and balances.positions == {}


def test_a_market_buy_fills_once_and_moves_the_account_by_its_fills(venue: Venue):
    quantity = 0.5
    events = venue.broker.submit(venue.order("c-buy", "buy", quantity))
    events += venue.advance()
    done = fills(events)
    assert sum(f.quantity for f in done) == pytest.approx(quantity, rel=1e-12)
    assert {f.client_order_id for f in done} == {"c-buy"}
    assert len({f.fill_id for f in done}) == len(done)
    [final] = terminal(events)
    assert final.status == "filled" and final.filled_quantity == pytest.approx(quantity)
    quote_fees = sum(
        f.fee for f in done if f.fee_currency == venue.broker.balances().quote_currency
    )
    spent = sum(f.quantity * f.price for f in done) + quote_fees
    balances = venue.broker.balances()
    assert balances.cash == pytest.approx(venue.cash - spent, rel=1e-9)
    assert balances.positions.get(venue.symbol, 0.0) == pytest.approx(
        quantity - sum(f.fee for f in done if f.fee_currency == venue.symbol.split("/")[0]),
        rel=1e-9,
    )
    assert venue.broker.order_status("c-buy").status == "filled"


def test_a_second_submit_of_an_id_trades_nothing_and_answers_its_state(venue: Venue):
    request = venue.order("c-dup", "buy", 0.25)
    first = venue.broker.submit(request) + venue.advance()
    cash = venue.broker.balances().cash
    again = venue.broker.submit(request) + venue.advance()
    assert fills(again) == []
    answers = [e for e in again if isinstance(e, OrderUpdate)]
    assert [a.status for a in answers] == ["filled"]
    assert answers[0].filled_quantity == pytest.approx(0.25)
    assert venue.broker.balances().cash == pytest.approx(cash)
    assert len(terminal(first)) == 1


def test_a_resting_limit_order_is_listed_and_can_be_cancelled_once(venue: Venue):
    limit = venue.price * 0.8
    events = venue.broker.submit(
        venue.order("c-limit", "buy", 0.1, order_type="limit", limit_price=limit)
    )
    events += venue.advance()
    assert fills(events) == [] and terminal(events) == []
    assert [o.request.client_order_id for o in venue.broker.open_orders()] == ["c-limit"]
    [cancelled] = terminal(venue.broker.cancel("c-limit", "contract test"))
    assert cancelled.status == "cancelled"
    assert venue.broker.open_orders() == []
    assert venue.broker.order_status("c-limit").status == "cancelled"
    [again] = venue.broker.cancel("c-limit", "contract test")
    assert again.status == "cancelled"  # a terminal order answers its state
    assert venue.broker.balances().cash == pytest.approx(venue.cash)


def test_a_limit_buy_fills_at_or_below_its_limit_when_the_market_trades_through(venue: Venue):
    limit = venue.price * 0.9
    events = venue.broker.submit(
        venue.order("c-cross", "buy", 0.2, order_type="limit", limit_price=limit)
    )
    events += venue.cross(venue.price * 0.85)
    done = fills(events)
    assert done and all(f.price <= limit * (1 + 1e-12) for f in done)
    assert sum(f.quantity for f in done) == pytest.approx(0.2)
    [final] = terminal(events)
    assert final.status == "filled"
    assert venue.broker.open_orders() == []


def test_an_order_below_the_minimum_notional_is_rejected_saying_why(venue: Venue):
    quantity = round(venue.minimum_notional() / venue.price / 2, 5)
    events = venue.broker.submit(venue.order("c-small", "buy", quantity))
    events += venue.advance()
    [final] = terminal(events)
    assert final.status == "rejected" and final.reason
    assert "NOTIONAL" in final.reason.upper()
    assert fills(events) == [] and venue.broker.balances().cash == pytest.approx(venue.cash)


def test_a_sell_without_a_position_is_rejected_and_changes_nothing(venue: Venue):
    events = venue.broker.submit(venue.order("c-naked", "sell", 0.1)) + venue.advance()
    [final] = terminal(events)
    assert final.status == "rejected" and final.reason
    assert fills(events) == []
    assert venue.broker.balances().cash == pytest.approx(venue.cash)


def test_a_buy_beyond_the_cash_never_overdraws_and_ends_once(venue: Venue):
    quantity = round(venue.cash / venue.price * 3, 5)
    events = venue.broker.submit(venue.order("c-big", "buy", quantity)) + venue.advance()
    assert len(terminal(events)) == 1
    assert venue.broker.balances().cash >= -1e-6
    assert sum(f.quantity * f.price for f in fills(events)) <= venue.cash * (1 + 1e-9)


def test_fills_since_returns_the_fills_from_that_time_on(venue: Venue):
    before = venue.now()
    events = venue.broker.submit(venue.order("c-since", "buy", 0.1)) + venue.advance()
    ids = {f.fill_id for f in fills(events)}
    assert ids and {f.fill_id for f in venue.broker.fills_since(before)} >= ids
    later = max(f.executed_at for f in fills(events)) + timedelta(seconds=1)
    assert venue.broker.fills_since(later) == []


def test_after_a_restart_a_filled_order_is_not_traded_again(venue: Venue):
    request = venue.order("c-restart", "buy", 0.3)
    venue.broker.submit(request)
    venue.advance()
    balances = venue.broker.balances()
    restarted = venue.restart()
    events = restarted.submit(request) + venue.advance()
    assert fills(events) == []
    assert restarted.order_status("c-restart").status == "filled"
    assert restarted.balances().cash == pytest.approx(balances.cash)
    assert restarted.balances().positions == pytest.approx(balances.positions)


def test_a_resting_order_survives_a_restart_and_fills_once(venue: Venue):
    limit = venue.price * 0.9
    request = venue.order("c-rest", "buy", 0.1, order_type="limit", limit_price=limit)
    venue.broker.submit(request)
    venue.restart()
    assert [o.request.client_order_id for o in venue.broker.open_orders()] == ["c-rest"]
    events = venue.cross(venue.price * 0.8) + venue.broker.submit(request) + venue.advance()
    assert sum(f.quantity for f in fills(events)) == pytest.approx(0.1)
    statuses = Counter(u.status for u in terminal(events))
    assert statuses["filled"] >= 1 and set(statuses) == {"filled"}
    assert venue.broker.open_orders() == []
