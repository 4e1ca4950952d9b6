"""The recorder counts each order and fill once by its business id, whatever the bus repeats."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from engine.bus import MemoryBus
from engine.clock import SimulatedClock
from engine.events import Fill, OrderRequest, OrderUpdate, PortfolioSnapshot, make_event
from services.daemons.recorder import RecorderService

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def order(symbol: str) -> OrderRequest:
    return OrderRequest(
        client_order_id=f"rb-1-{symbol}",
        rebalance_id="rb-1",
        asof=T0,
        symbol=symbol,
        side="buy",
        quantity=2.0,
    )


def fill(symbol: str, price: float, fee: float) -> Fill:
    return Fill(
        fill_id=f"rb-1-{symbol}-f1",
        client_order_id=f"rb-1-{symbol}",
        symbol=symbol,
        side="buy",
        quantity=2.0,
        price=price,
        fee=fee,
        fee_currency="USDT",
        executed_at=T0,
    )


def test_orders_and_fills_published_again_under_new_event_ids_count_once():
    recorder = RecorderService(MemoryBus(), SimulatedClock(T0))
    payloads = [order("A"), order("B"), fill("A", 10.0, 0.02), fill("B", 30.0, 0.06)]
    for _ in range(3):  # each handled three times, each time as a new event
        for payload in payloads:
            recorder.handle(make_event(payload, source="test", ts=T0))
    snapshot = PortfolioSnapshot(
        asof=T0,
        cash=1000.0 - 80.0 - 0.08,
        positions={"A": 2.0, "B": 2.0},
        prices={"A": 10.0, "B": 30.0},
        equity=999.92,
        gross_exposure=80.0 / 999.92,
        high_water_mark=1000.0,
        drawdown=0.00008,
        fills_applied=2,
    )
    recorder.handle(make_event(snapshot, source="test", ts=T0))
    summary = recorder.summary(1000.0, 252.0, bars=1)
    assert (summary["orders"], summary["fills"]) == (2, 2)
    assert summary["fees"] == 0.02 + 0.06
    assert summary["turnover"] == (2 * 10.0 + 2 * 30.0) / ((1000.0 + 999.92) / 2)


def test_order_outcomes_count_each_order_once_and_partial_fills_are_counted():
    recorder = RecorderService(MemoryBus(), SimulatedClock(T0))

    def update(symbol: str, status: str, filled: float, reason: str | None = None):
        return OrderUpdate(
            client_order_id=f"rb-1-{symbol}", status=status, filled_quantity=filled, reason=reason
        )

    second = msgspec.structs.replace(fill("A", 11.0, 0.01), fill_id="rb-1-A-f2")
    payloads = [
        fill("A", 10.0, 0.02),
        second,  # A filled over two bars
        update("A", "partially_filled", 2.0),
        update("A", "filled", 4.0),
        fill("B", 30.0, 0.06),
        update("B", "expired", 2.0),  # B ended part-way
        update("B", "expired", 2.0, reason="duplicate submit: order already known"),
        update("C", "rejected", 0.0),
        fill("D", 5.0, 0.0),
        update("D", "filled", 2.0),  # one fill, whole: not partial
    ]
    for payload in payloads:
        recorder.handle(make_event(payload, source="test", ts=T0))
    summary = recorder.summary(1000.0, 252.0, bars=1)
    assert summary["order_outcomes"] == {"expired": 1, "filled": 2, "rejected": 1}
    assert summary["partial_fills"] == 2  # A (two fills) and B (expired after a fill)
