"""The paper broker fills at the right bar and price, never lends and never trades twice: a
duplicate submit is answered with the existing order's state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from brokers.simulated import DUPLICATE_SUBMIT, SimulatedBroker
from engine.events import BarSet, Fill, OrderRequest, OrderUpdate

DAY0 = datetime(2024, 1, 1, tzinfo=UTC)
SYMBOLS = ("BTC/USDT", "ETH/USDT")


def day(n: int) -> datetime:
    return DAY0 + timedelta(days=n)


def bar_set(
    n: int, opens: tuple[float, ...], closes: tuple[float, ...], symbols: tuple[str, ...] = SYMBOLS
) -> BarSet:
    """Daily bars opening at day ``n``; high/low bracket open and close."""
    return BarSet(
        timeframe="1d",
        bar_open=day(n),
        symbols=symbols,
        open=opens,
        high=tuple(max(o, c) * 1.01 for o, c in zip(opens, closes)),
        low=tuple(min(o, c) * 0.99 for o, c in zip(opens, closes)),
        close=closes,
    )


def feed(broker: SimulatedBroker, bars: BarSet) -> list:
    return broker.on_bar(bars, bars.close_time)


def order(
    symbol: str,
    side: str,
    quantity: float,
    *,
    asof: datetime | None = None,
    client_order_id: str | None = None,
    **extra,
) -> OrderRequest:
    return OrderRequest(
        client_order_id=client_order_id or f"rb-1-{symbol}-{side}",
        rebalance_id="rb-1",
        asof=asof or day(1),
        symbol=symbol,
        side=side,
        quantity=quantity,
        **extra,
    )


def updates(events: list) -> list[OrderUpdate]:
    return [e for e in events if isinstance(e, OrderUpdate)]


def fills(events: list) -> list[Fill]:
    return [e for e in events if isinstance(e, Fill)]


# Bar 0 opens 2024-01-01 and closes 2024-01-02 (the decision time ``day(1)``); bar 1 opens then.
BAR0 = bar_set(0, opens=(100.0, 10.0), closes=(110.0, 11.0))
BAR1 = bar_set(1, opens=(120.0, 12.0), closes=(125.0, 12.5))
BAR2 = bar_set(2, opens=(130.0, 13.0), closes=(135.0, 13.5))


def test_bar_set_close_time_is_one_day_after_its_open():
    assert BAR0.close_time == day(1) == BAR1.bar_open


# -- where and when orders fill ------------------------------------------------------------------
def test_next_open_order_waits_for_the_next_bar_and_fills_at_its_open():
    broker = SimulatedBroker(initial_cash=10_000.0, fee_rate=0.0)
    feed(broker, BAR0)
    submitted = broker.submit(order("BTC/USDT", "buy", 2.0, asof=BAR0.close_time))
    assert [(u.status, u.filled_quantity) for u in updates(submitted)] == [("accepted", 0.0)]
    assert not fills(submitted) and broker.open_order_count == 1
    events = feed(broker, BAR1)
    [fill] = fills(events)
    assert (fill.symbol, fill.side, fill.quantity, fill.price) == ("BTC/USDT", "buy", 2.0, 120.0)
    assert fill.executed_at == BAR1.bar_open
    assert [(u.status, u.filled_quantity, u.average_price) for u in updates(events)] == [
        ("filled", 2.0, 120.0)
    ]
    assert broker.open_order_count == 0
    assert broker.positions == {"BTC/USDT": 2.0}
    assert broker.cash == pytest.approx(10_000.0 - 2.0 * 120.0)


def test_next_open_order_fills_at_once_when_its_bar_is_already_known():
    broker = SimulatedBroker(initial_cash=10_000.0, fee_rate=0.0)
    for bars in (BAR0, BAR1, BAR2):
        feed(broker, bars)
    [fill] = fills(broker.submit(order("ETH/USDT", "buy", 3.0, asof=day(1))))
    assert fill.price == 12.0 and fill.executed_at == day(1)


def test_next_open_order_does_not_fill_on_a_bar_opening_before_its_asof():
    broker = SimulatedBroker(initial_cash=10_000.0, fee_rate=0.0)
    broker.submit(order("BTC/USDT", "buy", 1.0, asof=day(2)))
    assert feed(broker, BAR0) == [] and feed(broker, BAR1) == []
    [fill] = fills(feed(broker, BAR2))
    assert fill.price == 130.0 and fill.executed_at == day(2)


def test_close_mode_fills_at_the_close_of_the_bar_closing_at_asof():
    broker = SimulatedBroker(initial_cash=10_000.0, fee_rate=0.0, fill_price="close")
    feed(broker, BAR0)
    feed(broker, BAR1)
    [fill] = fills(broker.submit(order("BTC/USDT", "buy", 1.0, asof=BAR0.close_time)))
    assert fill.price == 110.0 and fill.executed_at == BAR0.close_time


def test_close_mode_order_waits_for_the_bar_that_closes_at_asof():
    broker = SimulatedBroker(initial_cash=10_000.0, fee_rate=0.0, fill_price="close")
    feed(broker, BAR0)
    broker.submit(order("BTC/USDT", "buy", 1.0, asof=BAR1.close_time))
    assert broker.open_order_count == 1
    [fill] = fills(feed(broker, BAR1))
    assert fill.price == 125.0 and fill.executed_at == day(2)


def test_queued_orders_fill_in_arrival_order():
    broker = SimulatedBroker(initial_cash=10_000.0, fee_rate=0.0)
    broker.submit(order("ETH/USDT", "buy", 1.0, client_order_id="first"))
    broker.submit(order("BTC/USDT", "buy", 1.0, client_order_id="second"))
    assert [f.client_order_id for f in fills(feed(broker, BAR1))] == ["first", "second"]


def test_unknown_fill_price_mode_is_refused_naming_it():
    expected = "fill_price must be one of 'next_open', 'close', 'next_vwap', received 'vwap'"
    with pytest.raises(ValueError, match=expected):
        SimulatedBroker(initial_cash=1.0, fill_price="vwap")  # type: ignore[arg-type]


# -- fees and cash -------------------------------------------------------------------------------
def test_buy_pays_notional_plus_fee_and_sell_receives_notional_minus_fee():
    fee_rate = 0.002
    broker = SimulatedBroker(initial_cash=10_000.0, fee_rate=fee_rate)
    feed(broker, BAR0)
    feed(broker, BAR1)
    feed(broker, BAR2)
    [buy] = fills(broker.submit(order("BTC/USDT", "buy", 3.0, asof=day(1))))
    assert buy.fee == pytest.approx(3.0 * 120.0 * fee_rate) and buy.fee_currency == "USDT"
    assert broker.cash == pytest.approx(10_000.0 - 360.0 - 0.72)
    [sell] = fills(broker.submit(order("BTC/USDT", "sell", 1.0, asof=day(2))))
    assert sell.fee == pytest.approx(1.0 * 130.0 * fee_rate)
    assert broker.cash == pytest.approx(10_000.0 - 360.72 + 130.0 - 0.26)
    assert broker.positions == {"BTC/USDT": pytest.approx(2.0)}


def test_fill_ids_are_unique_and_name_their_order():
    broker = SimulatedBroker(initial_cash=10_000.0)
    feed(broker, BAR1)
    first = fills(broker.submit(order("BTC/USDT", "buy", 1.0, client_order_id="o1")))
    second = fills(broker.submit(order("ETH/USDT", "buy", 1.0, client_order_id="o2")))
    assert first[0].fill_id != second[0].fill_id
    assert first[0].fill_id.startswith("o1-") and second[0].fill_id.startswith("o2-")


# -- never lends ---------------------------------------------------------------------------------
def test_buy_larger_than_cash_is_cut_to_what_the_cash_pays_for():
    fee_rate = 0.001
    broker = SimulatedBroker(initial_cash=1_000.0, fee_rate=fee_rate)
    feed(broker, BAR1)
    events = broker.submit(order("BTC/USDT", "buy", 20.0))
    affordable = 1_000.0 / (120.0 * (1 + fee_rate))
    [fill] = fills(events)
    assert fill.quantity == pytest.approx(affordable)
    [accepted, terminal] = updates(events)
    assert accepted.status == "accepted"
    assert terminal.status == "cancelled" and terminal.is_terminal
    assert terminal.filled_quantity == pytest.approx(affordable)
    assert terminal.reason == "rest cancelled: cash covers only part"
    assert broker.cash == pytest.approx(0.0, abs=1e-9)
    assert broker.positions["BTC/USDT"] == pytest.approx(affordable)


def test_buy_with_no_cash_left_is_rejected():
    broker = SimulatedBroker(initial_cash=0.0)
    feed(broker, BAR1)
    [_, terminal] = updates(broker.submit(order("BTC/USDT", "buy", 1.0)))
    assert (terminal.status, terminal.reason) == ("rejected", "insufficient cash")


def test_sell_larger_than_the_position_is_cut_to_the_position():
    broker = SimulatedBroker(initial_cash=10_000.0, fee_rate=0.0)
    feed(broker, BAR1)
    broker.submit(order("ETH/USDT", "buy", 4.0, client_order_id="buy"))
    events = broker.submit(order("ETH/USDT", "sell", 10.0, client_order_id="sell"))
    [fill] = fills(events)
    assert fill.quantity == 4.0
    terminal = updates(events)[-1]
    assert terminal.status == "cancelled" and terminal.filled_quantity == 4.0
    assert terminal.reason == "rest cancelled: position smaller than order"
    assert "ETH/USDT" not in broker.positions
    assert broker.cash == pytest.approx(10_000.0)


def test_sell_without_a_position_is_rejected_and_changes_nothing():
    broker = SimulatedBroker(initial_cash=500.0)
    feed(broker, BAR1)
    events = broker.submit(order("BTC/USDT", "sell", 1.0))
    assert not fills(events)
    terminal = updates(events)[-1]
    assert (terminal.status, terminal.reason) == ("rejected", "no position to sell")
    assert broker.cash == 500.0 and broker.positions == {}


# -- idempotence and rejections ------------------------------------------------------------------
def test_a_resubmitted_filled_order_answers_its_state_and_never_trades_twice():
    broker = SimulatedBroker(initial_cash=10_000.0, fee_rate=0.0)
    feed(broker, BAR1)
    first = order("BTC/USDT", "buy", 1.0, client_order_id="rb-1-BTC")
    assert fills(broker.submit(first))
    with capture_logs() as logs:
        again = broker.submit(first)
        other = broker.submit(order("BTC/USDT", "buy", 5.0, client_order_id="rb-1-BTC"))
    for answer in (again, other):
        # One update with the state it is in, and no fill: the fill went out the first time.
        [update] = answer
        assert isinstance(update, OrderUpdate) and update.is_terminal
        assert (update.status, update.filled_quantity, update.average_price) == (
            "filled",
            1.0,
            120.0,
        )
        assert update.reason == DUPLICATE_SUBMIT == "duplicate submit: order already known"
    assert broker.positions == {"BTC/USDT": 1.0}
    assert broker.cash == 10_000.0 - 120.0
    assert [(e["event"], e["log_level"], e["client_order_id"]) for e in logs] == [
        ("broker.duplicate_submit", "info", "rb-1-BTC"),
        ("broker.duplicate_submit", "warning", "rb-1-BTC"),  # another quantity: a caller bug
    ]
    assert logs[1]["original"] == "buy 1.0 BTC/USDT" and logs[1]["received"] == "buy 5.0 BTC/USDT"


def test_a_resubmitted_queued_order_answers_accepted_and_stays_one_order():
    broker = SimulatedBroker(initial_cash=10_000.0, fee_rate=0.0)
    request = order("BTC/USDT", "buy", 1.0)
    assert [(u.status, u.reason) for u in updates(broker.submit(request))] == [("accepted", None)]
    [answer] = broker.submit(request)
    assert isinstance(answer, OrderUpdate)
    assert (answer.status, answer.filled_quantity, answer.average_price, answer.reason) == (
        "accepted",
        0.0,
        None,
        DUPLICATE_SUBMIT,
    )
    assert broker.open_order_count == 1
    assert len(fills(feed(broker, BAR1))) == 1
    assert broker.positions == {"BTC/USDT": 1.0} and broker.cash == 10_000.0 - 120.0
    # Asked again once filled: its new state, still no fill.
    [answer] = broker.submit(request)
    assert (answer.status, answer.filled_quantity, answer.average_price) == ("filled", 1.0, 120.0)
    assert feed(broker, BAR2) == [] and broker.positions == {"BTC/USDT": 1.0}


def test_a_resubmitted_partly_filled_order_reports_the_quantity_and_why_the_rest_went():
    broker = SimulatedBroker(initial_cash=600.0, fee_rate=0.0)
    feed(broker, BAR1)
    request = order("BTC/USDT", "buy", 10.0)
    [fill] = fills(broker.submit(request))
    assert fill.quantity == 5.0  # 600 / 120
    [answer] = broker.submit(request)
    assert (answer.status, answer.filled_quantity, answer.average_price) == (
        "cancelled",
        5.0,
        120.0,
    )
    assert answer.reason == f"{DUPLICATE_SUBMIT}; rest cancelled: cash covers only part"
    assert broker.cash == 0.0 and broker.positions == {"BTC/USDT": 5.0}


def test_a_resubmitted_rejected_or_cancelled_order_stays_so():
    broker = SimulatedBroker(initial_cash=0.0)
    feed(broker, BAR1)
    rejected = order("BTC/USDT", "buy", 1.0, client_order_id="poor")
    broker.submit(rejected)
    [answer] = broker.submit(rejected)
    assert (answer.status, answer.filled_quantity) == ("rejected", 0.0)
    assert answer.reason == f"{DUPLICATE_SUBMIT}; insufficient cash"
    queued = order("ETH/USDT", "sell", 1.0, asof=day(5), client_order_id="late")
    broker.submit(queued)
    broker.cancel_open_orders("end of data")
    [answer] = broker.submit(queued)
    assert (answer.status, answer.reason) == ("cancelled", f"{DUPLICATE_SUBMIT}; end of data")
    assert broker.open_order_count == 0


def test_an_order_refused_while_halted_is_not_traded_when_submitted_again():
    broker = SimulatedBroker(initial_cash=10_000.0, fee_rate=0.0)
    feed(broker, BAR1)
    request = order("BTC/USDT", "buy", 1.0)
    [refused] = broker.reject(request, "trading halted")
    assert (refused.status, refused.reason) == ("rejected", "trading halted")
    [answer] = broker.submit(request)
    assert (answer.status, answer.reason) == ("rejected", f"{DUPLICATE_SUBMIT}; trading halted")
    assert broker.positions == {} and broker.cash == 10_000.0
    # ... and an order known before the halt keeps its own state, not "rejected".
    filled = order("ETH/USDT", "buy", 2.0, client_order_id="before-halt")
    broker.submit(filled)
    [answer] = broker.reject(filled, "trading halted")
    assert (answer.status, answer.filled_quantity) == ("filled", 2.0)


def test_a_fill_id_depends_on_its_order_alone():
    # A broker that lost its state (a restarted process) names the same execution the same,
    # so a book that dedupes by fill id does not book it twice.
    busy = SimulatedBroker(initial_cash=10_000.0)
    fresh = SimulatedBroker(initial_cash=10_000.0)
    for broker in (busy, fresh):
        feed(broker, BAR1)
    busy.submit(order("ETH/USDT", "buy", 1.0, client_order_id="o1"))
    request = order("BTC/USDT", "buy", 1.0, client_order_id="o2")
    [from_busy] = fills(busy.submit(request))
    [from_fresh] = fills(fresh.submit(request))
    assert from_busy.fill_id == from_fresh.fill_id == "o2-f1"


def test_symbol_missing_from_its_only_fill_bar_expires_naming_it():
    broker = SimulatedBroker(initial_cash=10_000.0)
    broker.submit(order("SOL/USDT", "buy", 1.0))
    events = feed(broker, BAR1)
    [terminal] = updates(events)
    assert terminal.status == "expired"
    assert terminal.reason == (
        f"expired after 1 bar(s): nothing filled (no bar for SOL/USDT at "
        f"{BAR1.close_time.isoformat()})"
    )
    assert not fills(events) and broker.cash == 10_000.0


def test_a_working_order_waits_out_a_bar_its_symbol_misses():
    broker = SimulatedBroker(initial_cash=10_000.0, fee_rate=0.0, order_ttl_bars=2)
    broker.submit(order("SOL/USDT", "buy", 1.0))
    assert feed(broker, BAR1) == []  # no SOL bar: nothing happens, one bar of two used
    with_sol = bar_set(2, (130.0, 13.0, 40.0), (135.0, 13.5, 41.0), SYMBOLS + ("SOL/USDT",))
    events = feed(broker, with_sol)
    assert [(f.quantity, f.price) for f in fills(events)] == [(1.0, 40.0)]
    assert updates(events)[-1].status == "filled"


def test_universe_change_between_bars_maps_symbols_to_the_right_column():
    broker = SimulatedBroker(initial_cash=10_000.0, fee_rate=0.0)
    feed(broker, BAR0)
    feed(
        broker,
        bar_set(
            1,
            opens=(7.0, 12.0, 120.0),
            closes=(7.5, 12.5, 125.0),
            symbols=("SOL/USDT", "ETH/USDT", "BTC/USDT"),
        ),
    )
    [fill] = fills(broker.submit(order("BTC/USDT", "buy", 1.0)))
    assert fill.price == 120.0


def test_cancel_open_orders_cancels_every_queued_order_with_the_reason():
    broker = SimulatedBroker(initial_cash=10_000.0)
    broker.submit(order("BTC/USDT", "buy", 1.0, client_order_id="o1"))
    broker.submit(order("ETH/USDT", "buy", 1.0, client_order_id="o2"))
    cancelled = broker.cancel_open_orders("end of data")
    assert [(u.client_order_id, u.status, u.reason) for u in cancelled] == [
        ("o1", "cancelled", "end of data"),
        ("o2", "cancelled", "end of data"),
    ]
    assert broker.open_order_count == 0
    assert feed(broker, BAR1) == []
    assert broker.positions == {} and broker.cash == 10_000.0


# -- lot sizes -----------------------------------------------------------------------------------
def test_non_fractional_broker_floors_quantities():
    broker = SimulatedBroker(initial_cash=10_000.0, fee_rate=0.0, fractional=False)
    feed(broker, BAR1)
    [fill] = fills(broker.submit(order("ETH/USDT", "buy", 2.7)))
    assert fill.quantity == 2.0
    assert broker.positions == {"ETH/USDT": 2.0}
    assert broker.cash == pytest.approx(10_000.0 - 24.0)


def test_non_fractional_buy_capped_by_cash_floors_the_affordable_quantity():
    broker = SimulatedBroker(initial_cash=1_000.0, fee_rate=0.001, fractional=False)
    feed(broker, BAR1)
    [fill] = fills(broker.submit(order("BTC/USDT", "buy", 20.0)))
    assert fill.quantity == 8.0  # 1000 / (120 * 1.001) = 8.32...


def test_non_fractional_order_below_one_unit_is_rejected():
    broker = SimulatedBroker(initial_cash=10_000.0, fractional=False)
    feed(broker, BAR1)
    events = broker.submit(order("BTC/USDT", "buy", 0.4))
    assert not fills(events) and updates(events)[-1].status == "rejected"


def test_non_fractional_rounding_is_not_blamed_on_cash():
    broker = SimulatedBroker(initial_cash=10_000.0, fee_rate=0.0, fractional=False)
    feed(broker, BAR1)
    terminal = updates(broker.submit(order("ETH/USDT", "buy", 2.7)))[-1]
    assert terminal.status == "cancelled" and terminal.filled_quantity == 2.0
    assert "cash" not in (terminal.reason or "")
