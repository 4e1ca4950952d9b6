"""The whole loop, with the bus delivering some events twice (at least once: a handler run
again publishes the same business event under a new event id, which the bus's event-id dedupe
cannot catch). Every effect happens once, by its business id: the run's orders, fills, books
and final equity are those of the run without duplicates."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from brokers.simulated import DUPLICATE_SUBMIT
from engine.config import load_config
from engine.data import synthetic_panel
from engine.events import TERMINAL_ORDER_STATUSES, Envelope, make_event
from services.commands.backtest import Backtest
from tests.audit import Ledger, read_ledger, rebuild_and_compare, terminal_updates_per_order

BARS = 90


def config(fill_price: str):
    return load_config(
        None,
        {
            "DEEPFACTOR_SCHEDULE__CRON": "0 0 * * MON,THU",
            "DEEPFACTOR_BROKER__FILL_PRICE": fill_price,
            "DEEPFACTOR_PORTFOLIO__TOP_FRACTION": "0.3",
        },
    )


def again(event: Envelope) -> Envelope:
    """The same payload under a new event id, as a handler run again publishes it."""
    return make_event(event.payload, source=event.source, corr=event.corr, ts=event.ts)


def duplicating(backtest: Backtest, topics: set[str]) -> None:
    """Publish every event the services emit on ``topics`` twice: right after the first."""
    bus = backtest.bus
    publish_many: Callable = bus.publish_many

    def twice(topic: str, events):
        ids = publish_many(topic, events)
        if topic in topics:
            publish_many(topic, [again(e) for e in events])
        return ids

    bus.publish_many = twice  # type: ignore[method-assign]


def duplicating_ticks(backtest: Backtest) -> None:
    """Publish every schedule tick twice at once, and once more after the next bars, when its
    orders are in flight (next_open) or already done (close)."""
    bus = backtest.bus
    publish: Callable = bus.publish
    held: list[Envelope] = []

    def with_repeats(topic: str, event: Envelope):
        message_id = publish(topic, event)
        if topic == "schedule":
            publish(topic, again(event))
            held.append(event)
        elif topic == "bars" and held:
            publish("schedule", again(held.pop()))
        return message_id

    bus.publish = with_repeats  # type: ignore[method-assign]


def run(fill_price: str, tamper: Callable[[Backtest], None] | None = None):
    backtest = Backtest(config(fill_price), synthetic_panel(8, BARS, seed=11))
    if tamper is not None:
        tamper(backtest)
    summary = backtest.run()
    assert backtest.pump.pending() == 0
    assert not backtest.services.rebalance.open_orders  # no order left waiting: no deadlock
    return summary, read_ledger(backtest.bus), backtest


def first_of_each(ledger: Ledger) -> Ledger:
    """The ledger with each order and fill kept at its first appearance (business-id dedupe)."""
    orders = {o.client_order_id: o for o in reversed(ledger.orders)}
    fills = {f.fill_id: f for f in reversed(ledger.fills)}
    return Ledger(
        bars=ledger.bars,
        orders=[o for o in ledger.orders if orders.pop(o.client_order_id, None) is not None],
        updates=ledger.updates,
        fills=[f for f in ledger.fills if fills.pop(f.fill_id, None) is not None],
        snapshots=ledger.snapshots,
    )


def order_book(ledger: Ledger) -> list[tuple]:
    return [(o.client_order_id, o.side, o.quantity) for o in ledger.orders]


def fill_book(ledger: Ledger) -> list[tuple]:
    return [(f.fill_id, f.client_order_id, f.quantity, f.price, f.fee) for f in ledger.fills]


@pytest.fixture(scope="module", params=["next_open", "close"])
def baseline(request):
    summary, ledger, _ = run(request.param)
    assert ledger.orders, "the run should trade"
    return request.param, summary, ledger


def test_duplicate_ticks_place_each_order_once_and_change_nothing(baseline):
    fill_price, expected, expected_ledger = baseline
    summary, ledger, backtest = run(fill_price, duplicating_ticks)
    ticks = backtest.market.ticks_published
    assert ticks > 3
    # Every tick came three times; the repeats placed nothing.
    coids = [o.client_order_id for o in ledger.orders]
    assert len(coids) == len(set(coids))
    assert order_book(ledger) == order_book(expected_ledger)
    counts = terminal_updates_per_order(ledger)
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
    assert fill_book(ledger) == fill_book(expected_ledger)
    assert rebuild_and_compare(ledger, config(fill_price).portfolio.initial_cash) >= BARS
    assert summary["final_equity"] == expected["final_equity"]
    assert summary["orders"] == expected["orders"] and summary["fills"] == expected["fills"]


def test_fills_and_order_updates_delivered_twice_are_booked_once(baseline):
    fill_price, expected, expected_ledger = baseline
    summary, ledger, backtest = run(
        fill_price, lambda b: duplicating(b, {"fills", "order_updates"})
    )
    assert len(ledger.fills) == 2 * len(expected_ledger.fills)  # every fill really came twice
    deduped = first_of_each(ledger)
    assert fill_book(deduped) == fill_book(expected_ledger)
    assert order_book(ledger) == order_book(expected_ledger)
    book = backtest.services.rebalance.book
    assert book.fills_applied == len(expected_ledger.fills)
    final, expected_final = ledger.snapshots[-1], expected_ledger.snapshots[-1]
    assert (final.cash, final.positions, final.equity) == (
        expected_final.cash,
        expected_final.positions,
        expected_final.equity,
    )
    assert summary["final_equity"] == expected["final_equity"]
    # Every snapshot is what the first fills_applied distinct fills add up to.
    assert rebuild_and_compare(deduped, config(fill_price).portfolio.initial_cash) >= BARS


def test_orders_delivered_twice_trade_once(baseline):
    fill_price, expected, expected_ledger = baseline
    summary, ledger, _ = run(fill_price, lambda b: duplicating(b, {"orders"}))
    deduped = first_of_each(ledger)
    assert order_book(deduped) == order_book(expected_ledger)
    assert len(ledger.orders) == 2 * len(deduped.orders)
    # No second fill for any order: the ledger's fills are the run's without duplicates.
    assert fill_book(ledger) == fill_book(expected_ledger)
    # Each order has one terminal transition; the broker's answers to the second submit say
    # what state the order was in, and are marked as such.
    answered = [u for u in ledger.updates if (u.reason or "").startswith(DUPLICATE_SUBMIT)]
    assert sorted(u.client_order_id for u in answered) == sorted(
        o.client_order_id for o in deduped.orders
    )
    transitions = Counter(
        u.client_order_id
        for u in ledger.updates
        if u.status in TERMINAL_ORDER_STATUSES and not (u.reason or "").startswith(DUPLICATE_SUBMIT)
    )
    assert set(transitions.values()) == {1} and len(transitions) == len(deduped.orders)
    assert rebuild_and_compare(ledger, config(fill_price).portfolio.initial_cash) >= BARS
    assert summary["final_equity"] == expected["final_equity"]
