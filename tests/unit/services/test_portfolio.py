"""The book applies each fill once, by its fill id, whatever the bus delivers twice."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from engine.events import Fill
from services.daemons.portfolio import PortfolioBook

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def fill(fill_id: str, side: str = "buy", quantity: float = 2.0, price: float = 100.0) -> Fill:
    return Fill(
        fill_id=fill_id,
        client_order_id="rb-1-A",
        symbol="A",
        side=side,
        quantity=quantity,
        price=price,
        fee=0.001 * quantity * price,
        fee_currency="USDT",
        executed_at=T0,
    )


def test_a_fill_delivered_twice_moves_cash_and_position_once():
    book = PortfolioBook(cash=1_000.0)
    assert book.apply_fill(fill("rb-1-A-f1")) is True
    with capture_logs() as logs:
        assert book.apply_fill(fill("rb-1-A-f1")) is False
    assert book.cash == pytest.approx(1_000.0 - 200.0 - 0.2)
    assert book.positions == {"A": 2.0}
    assert book.fills_applied == 1
    assert [(e["event"], e["fill_id"], e["client_order_id"]) for e in logs] == [
        ("fill.duplicate_ignored", "rb-1-A-f1", "rb-1-A")
    ]
    assert book.snapshot(T0).fills_applied == 1


def test_two_fills_of_one_order_with_their_own_ids_are_both_booked():
    book = PortfolioBook(cash=1_000.0)
    book.apply_fill(fill("rb-1-A-f1"))
    book.apply_fill(fill("rb-1-A-f2"))  # same content, another execution: a partial fill
    assert book.positions == {"A": 4.0}
    assert book.cash == pytest.approx(1_000.0 - 400.0 - 0.4)
    assert book.fills_applied == 2


def test_a_duplicate_sell_does_not_close_the_position_twice():
    book = PortfolioBook(cash=1_000.0)
    book.apply_fill(fill("buy-f1"))
    book.apply_fill(fill("sell-f1", side="sell", quantity=2.0, price=110.0))
    book.apply_fill(fill("sell-f1", side="sell", quantity=2.0, price=110.0))
    assert book.positions == {}
    assert book.cash == pytest.approx(1_000.0 - 200.2 + 220.0 - 0.22)


def test_the_fill_ids_remembered_are_bounded_to_the_most_recent():
    book = PortfolioBook(cash=1_000.0, fill_ids_kept=2)
    for n in (1, 2, 3):
        book.apply_fill(fill(f"f{n}", quantity=1.0))
    assert book.apply_fill(fill("f3", quantity=1.0)) is False
    assert book.apply_fill(fill("f2", quantity=1.0)) is False
    assert book.positions == {"A": 3.0}


@pytest.mark.parametrize(
    ("currency", "cash", "position", "logged"),
    [
        ("USDT", 1_000.0 - 200.0 - 0.5, 2.0, []),  # quote: off the cash
        ("BTC", 1_000.0 - 200.0, 2.0 - 0.5, []),  # base: off what was bought
        ("BNB", 1_000.0 - 200.0, 2.0, ["fill.fee_in_other_currency"]),  # neither: logged
    ],
)
def test_a_fee_comes_off_what_it_is_charged_in(currency, cash, position, logged):
    book = PortfolioBook(cash=1_000.0)
    charged = Fill(
        fill_id="f1", client_order_id="o1", symbol="BTC/USDT", side="buy", quantity=2.0,
        price=100.0, fee=0.5, fee_currency=currency, executed_at=T0,
    )  # fmt: skip
    with capture_logs() as logs:
        book.apply_fill(charged)
    assert book.cash == cash and book.positions == {"BTC/USDT": position}
    assert [e["event"] for e in logs] == logged
