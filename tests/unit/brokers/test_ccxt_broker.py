"""The ccxt adapter against ccxt's real Binance class over recorded Binance responses.

Nothing here touches a network: ``tests.recorded_exchange`` is the HTTP layer, so ccxt signs,
parses and maps errors exactly as it would against the exchange.
"""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import timedelta

import ccxt
import msgspec
import pytest
import structlog
from structlog.testing import capture_logs

from brokers.ccxt_broker import DUPLICATE_SUBMIT, CcxtBroker, CcxtSettings, venue_client_id
from brokers.ccxt_exchange import API_KEY_ENV, CCXT_LOGGER, SECRET_ENV, exchange_from_settings
from brokers.protocol import Broker, BrokerError
from engine.errors import ConfigError
from engine.events import Fill, OrderRequest, OrderUpdate
from engine.logging import REDACTED, configure_logging, forget_secrets, register_secret
from tests.recorded_exchange import START, RecordedExchange

SYMBOL = "BTC/USDT"
PRICE = 4000.0  # BTCUSDT in the recorded FULL order response trades at about 4000
CASH = 100_000.0
ORDER = ("POST", "/api/v3/order")
QUERY = ("GET", "/api/v3/order")
BINANCE_ID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
GRACE_S = CcxtSettings().unplaced_after_s  # after it, a lookup finding nothing is conclusive
UNKNOWN = "outcome unknown: the exchange was unreachable (ccxt:binance: "
NOT_PLACED = "not placed: the exchange was unreachable when it was sent (ccxt:binance: "
FOUND = "found at the exchange after its outcome was unknown"


@pytest.fixture
def venue() -> RecordedExchange:
    return RecordedExchange(balances={"USDT": CASH}, prices={SYMBOL: PRICE})


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def broker(venue: RecordedExchange, waits: list[float]) -> CcxtBroker:
    return new_broker(venue, waits)


@pytest.fixture(autouse=True)
def _forget_test_keys():
    yield
    forget_secrets()
    structlog.reset_defaults()


def new_broker(venue: RecordedExchange, waits: list[float], **settings) -> CcxtBroker:
    """A fresh adapter (a fresh ccxt exchange too) on ``venue``'s account: what a restart gets.
    Its clock is the venue's, so ``venue.advance`` moves both."""
    return CcxtBroker(
        venue.binance(),
        CcxtSettings(**settings),
        sleep=waits.append,
        clock=lambda: venue.now_ms / 1000,
    )


def request(
    client_order_id: str,
    side: str = "buy",
    quantity: float = 0.5,
    *,
    limit_price: float | None = None,
    symbol: str = SYMBOL,
) -> OrderRequest:
    return OrderRequest(
        client_order_id=client_order_id,
        rebalance_id="rb-weekly-20200601T000000Z",
        asof=START,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        quantity=quantity,
        order_type="market" if limit_price is None else "limit",
        limit_price=limit_price,
        reference_price=PRICE,
    )


def fills(events) -> list[Fill]:
    return [e for e in events if isinstance(e, Fill)]


def updates(events) -> list[OrderUpdate]:
    return [e for e in events if isinstance(e, OrderUpdate)]


def statuses(events) -> list[str]:
    return [e.status for e in updates(events)]


def logged(logs, event: str) -> list[dict]:
    return [entry for entry in logs if entry["event"] == event]


# -- placing orders --------------------------------------------------------------------------
def test_the_adapter_is_a_broker_named_after_its_exchange(broker):
    assert isinstance(broker, Broker)
    assert broker.name == "ccxt:binance"


def test_venue_client_id_is_a_stable_binance_id_sent_with_the_order(broker, venue):
    ours = "rb-weekly-20200601T000000Z-SYN007/USDT-" + "x" * 80  # 120 characters
    sent_id = venue_client_id(ours)
    assert BINANCE_ID.match(sent_id) and sent_id == venue_client_id(ours)
    assert sent_id != venue_client_id(ours + "y")
    broker.submit(request(ours))
    [post] = venue.sent(*ORDER)
    assert post["newClientOrderId"] == sent_id
    assert (post["symbol"], post["side"], post["type"], post["quantity"]) == (
        "BTCUSDT",
        "BUY",
        "MARKET",
        "0.5",
    )


def test_a_market_buy_reports_accepted_one_fill_per_trade_then_filled(waits):
    venue = RecordedExchange(
        balances={"USDT": CASH}, prices={SYMBOL: PRICE}, fills_per_market_order=3
    )
    broker = new_broker(venue, waits)
    events = broker.submit(request("c-1", quantity=0.3))
    assert [type(e).__name__ for e in events] == [
        "OrderUpdate",
        "Fill",
        "Fill",
        "Fill",
        "OrderUpdate",
    ]
    assert statuses(events) == ["accepted", "filled"]
    trade_ids = [t.trade_id for t in venue.trades]
    assert [f.fill_id for f in fills(events)] == [f"c-1-t{i}" for i in trade_ids]
    assert sum(f.quantity for f in fills(events)) == pytest.approx(0.3)
    assert {(f.price, f.fee_currency) for f in fills(events)} == {(PRICE, "USDT")}
    assert sum(f.fee for f in fills(events)) == pytest.approx(0.3 * PRICE * 0.001)
    assert [f.executed_at for f in fills(events)] == [START] * 3
    final = updates(events)[-1]
    assert final.broker_order_id == str(venue.order(venue_client_id("c-1")).order_id)
    assert final.filled_quantity == pytest.approx(0.3)
    assert final.average_price == pytest.approx(PRICE)


def test_a_duplicate_submit_answers_the_state_and_sends_nothing(broker, venue):
    broker.submit(request("c-dup"))
    calls = len(venue.calls)
    [answer] = broker.submit(request("c-dup"))
    assert answer.status == "filled" and answer.filled_quantity == pytest.approx(0.5)
    assert answer.reason == DUPLICATE_SUBMIT
    assert len(venue.calls) == calls and len(venue.sent(*ORDER)) == 1


def test_a_lost_create_response_is_found_by_client_id_and_not_sent_again(broker, venue, waits):
    venue.lose_next_response(*ORDER)
    events = broker.submit(request("c-lost"))
    assert len(venue.sent(*ORDER)) == 1  # the retry looked it up instead of sending it again
    lookups = [p.get("origClientOrderId") for p in venue.sent(*QUERY)]
    assert lookups == [venue_client_id("c-lost")] * 2  # before the create, and after the loss
    assert waits == [0.5]
    assert statuses(events) == ["accepted", "filled"]
    [fill] = fills(events)
    assert fill.fill_id == f"c-lost-t{venue.trades[0].trade_id}" and fill.quantity == 0.5
    assert venue.free("BTC") == pytest.approx(0.5)


def test_a_crash_between_create_and_commit_does_not_create_a_second_order(venue, waits):
    first = new_broker(venue, waits)
    committed = first.snapshot()  # the last commit before the order came in
    before_crash = first.submit(request("c-crash"))  # reached the exchange; never committed
    restarted = new_broker(venue, waits)
    restarted.restore(committed)
    assert restarted.reconcile() == [] and restarted.order_status("c-crash") is None
    again = restarted.submit(request("c-crash"))  # the same request, delivered again
    assert len(venue.sent(*ORDER)) == 1 and len(venue.orders) == 1
    assert statuses(again) == ["accepted", "filled"]
    assert [f.fill_id for f in fills(again)] == [f.fill_id for f in fills(before_crash)]
    assert fills(again)[0].quantity == 0.5 and fills(again)[0].price == PRICE
    assert venue.free("BTC") == pytest.approx(0.5)  # bought once
    # Booked once: nothing more comes of it, whatever is asked next.
    assert restarted.on_bar(None) == [] and restarted.reconcile() == []
    assert fills(restarted.submit(request("c-crash"))) == []


def test_a_halted_reject_of_an_order_placed_before_a_crash_answers_its_state(venue, waits):
    first = new_broker(venue, waits)
    committed = first.snapshot()
    first.submit(request("c-halt"))
    restarted = new_broker(venue, waits)
    restarted.restore(committed)
    events = restarted.reject(request("c-halt"), "trading halted")
    assert statuses(events) == ["accepted", "filled"] and len(fills(events)) == 1
    refused = restarted.reject(request("c-new"), "trading halted")
    assert [(u.status, u.reason) for u in updates(refused)] == [("rejected", "trading halted")]
    assert len(venue.sent(*ORDER)) == 1


# -- order errors ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("-1013", "Filter failure: LOT_SIZE"),
        ("-1121", "Invalid symbol."),
        ("-2010", "Account has insufficient balance for requested action."),
        ("-2013", "Order does not exist."),
    ],
)
def test_an_order_error_is_a_reject_with_the_exchange_message_never_retried(
    broker, venue, waits, code, message
):
    venue.fail_next(code, method="POST", path="/api/v3/order")
    events = broker.submit(request("c-bad"))
    [update] = events
    assert update.status == "rejected" and message in (update.reason or "")
    assert len(venue.sent(*ORDER)) == 1 and waits == []
    assert broker.order_status("c-bad").status == "rejected"
    assert broker.submit(request("c-bad"))[0].status == "rejected"  # remembered: not resent
    assert len(venue.sent(*ORDER)) == 1


def test_a_buy_beyond_the_cash_is_rejected_as_insufficient_funds(broker, venue):
    [update] = broker.submit(request("c-big", quantity=100.0))  # 400k USDT of 100k
    assert update.status == "rejected"
    assert "InsufficientFunds" in update.reason and "insufficient balance" in update.reason
    assert venue.free("USDT") == CASH and venue.orders == {}


def test_a_quantity_off_the_lot_step_is_refused_before_sending(broker, venue):
    [update] = broker.submit(request("c-step", quantity=0.0015))
    assert update.status == "rejected"
    assert (
        update.reason == "LOT_SIZE: quantity 0.0015 of BTC/USDT is not a multiple of its step 0.001"
    )
    assert venue.sent(*ORDER) == []


def test_an_unknown_symbol_is_refused_before_sending(broker, venue):
    [update] = broker.submit(request("c-doge", symbol="DOGE/USDT"))
    assert update.status == "rejected" and "unknown symbol DOGE/USDT" in update.reason
    assert venue.sent(*ORDER) == []


def test_an_order_on_a_halted_market_is_refused_before_sending(venue, waits):
    venue.halted.add(SYMBOL)  # exchangeInfo lists BTCUSDT with status BREAK
    broker = new_broker(venue, waits)
    [update] = broker.submit(request("c-halt", limit_price=3900.0))
    assert update.status == "rejected"
    assert update.reason == "HALTED: BTC/USDT is not trading (binance lists the market inactive)"
    assert venue.sent(*ORDER) == [] and venue.orders == {}


def test_a_limit_price_off_the_tick_is_refused_before_sending(broker, venue):
    # The recorded PRICE_FILTER tick of BTCUSDT is 0.000001; ccxt would round this to it.
    [update] = broker.submit(request("c-tick", limit_price=3900.0000005))
    assert update.status == "rejected"
    assert update.reason == (
        "PRICE_FILTER: limit price 3900.0000005 of BTC/USDT is not a multiple of its tick 1e-06"
    )
    assert venue.sent(*ORDER) == []


@pytest.mark.parametrize("limit", [3900.01, 3900.000001])
def test_a_limit_price_on_the_tick_is_sent_as_it_is(broker, venue, limit):
    [update] = broker.submit(request("c-on", quantity=0.2, limit_price=limit))
    assert update.status == "accepted"
    [sent] = venue.sent(*ORDER)
    assert (sent["type"], float(sent["price"])) == ("LIMIT", limit)


# -- network errors --------------------------------------------------------------------------
def test_network_errors_are_retried_with_backoff_then_raise_broker_error(broker, venue, waits):
    venue.fail_network("connection", method="GET", path="/api/v3/account", times=99)
    with pytest.raises(BrokerError, match=r"ccxt:binance: fetch_balance failed after 4 attempt"):
        broker.balances()
    assert waits == [0.5, 1.0, 2.0]
    assert len(venue.sent("GET", "/api/v3/account")) == 4


def test_a_network_error_that_clears_is_retried_transparently(broker, venue, waits):
    venue.fail_network("timeout", method="GET", path="/api/v3/account", times=2)
    assert broker.balances().cash == CASH
    assert waits == [0.5, 1.0]


def test_a_create_that_never_gets_through_is_kept_unknown_not_raised(broker, venue, waits):
    venue.fail_network("timeout", method="POST", path="/api/v3/order", times=4)
    [update] = broker.submit(request("c-down"))
    assert (update.status, update.broker_order_id) == ("accepted", None)
    assert update.reason.startswith(UNKNOWN)
    assert "create_order BTC/USDT failed after 4 attempt" in update.reason
    assert venue.orders == {}
    assert len(venue.sent(*ORDER)) == 4 and len(venue.sent(*QUERY)) == 4  # a lookup before each
    assert waits == [0.5, 1.0, 2.0]
    assert broker.order_status("c-down") == update


def test_backoff_is_capped(venue, waits):
    broker = new_broker(venue, waits, retry_attempts=6, backoff_s=1.0, backoff_max_s=3.0)
    venue.fail_network("connection", path="/api/v3/account", times=99)
    with pytest.raises(BrokerError):
        broker.balances()
    assert waits == [1.0, 2.0, 3.0, 3.0, 3.0]


def test_the_rate_limiter_stays_on_and_every_request_passes_it(broker, venue, waits):
    broker.submit(request("c-rate"))
    broker.balances()
    assert len(venue.throttled) == len(venue.calls) == 4 and all(c > 0 for c in venue.throttled)
    venue.fail_next("-1003", path="/api/v3/account")  # HTTP 429: ccxt's DDoSProtection
    assert broker.balances().cash == pytest.approx(CASH - 0.5 * PRICE * 1.001)
    assert waits == [0.5]
    off = venue.binance()
    off.enableRateLimit = False
    with pytest.raises(ValueError, match="enableRateLimit"):
        CcxtBroker(off)
    broker.exchange.enableRateLimit = False
    with pytest.raises(BrokerError, match="enableRateLimit was turned off"):
        broker.balances()


# -- orders that rest ------------------------------------------------------------------------
def test_a_partial_fill_then_cancel_ends_with_one_terminal_update(broker, venue):
    events = broker.submit(request("c-part", quantity=1.0, limit_price=3900.0))
    assert statuses(events) == ["accepted"] and fills(events) == []
    assert [o.request.client_order_id for o in broker.open_orders()] == ["c-part"]
    venue.advance()
    venue.set_price(SYMBOL, 3850.0, volume=0.4)
    events += broker.on_bar(None)
    [fill] = fills(events)
    assert (fill.quantity, fill.price, fill.executed_at) == (
        0.4,
        3900.0,
        START + timedelta(minutes=1),
    )
    assert statuses(events) == ["accepted", "partially_filled"]
    [open_order] = broker.open_orders()
    assert (open_order.status, open_order.filled_quantity) == ("partially_filled", 0.4)
    events += broker.cancel("c-part", "rebalance over")
    events += broker.on_bar(None) + broker.cancel_open_orders("halt")
    terminal = [u for u in updates(events) if u.is_terminal]
    assert [(u.status, u.filled_quantity, u.reason) for u in terminal] == [
        ("cancelled", 0.4, "rebalance over")
    ]
    assert venue.order(venue_client_id("c-part")).status == "CANCELED"
    assert venue.locked("USDT") == pytest.approx(0.0, abs=1e-9)
    assert broker.open_orders() == [] and len(fills(events)) == 1
    [answer] = broker.cancel("c-part", "again")  # a terminal order answers its state
    assert (answer.status, answer.reason) == ("cancelled", "rebalance over")


def test_a_cancel_of_an_order_filled_meanwhile_reports_the_fill_not_a_cancel(broker, venue):
    broker.submit(request("c-race", quantity=0.2, limit_price=3900.0))
    venue.set_price(SYMBOL, 3800.0)  # fills before the adapter hears of it
    events = broker.cancel("c-race", "too late")
    assert [p.get("origClientOrderId") for p in venue.sent("DELETE", "/api/v3/order")] == [
        venue_client_id("c-race")
    ]
    assert statuses(events) == ["filled"] and fills(events)[0].quantity == 0.2
    assert broker.on_bar(None) == []


def test_an_order_expired_at_the_exchange_is_reported_once(broker, venue):
    broker.submit(request("c-exp", quantity=0.2, limit_price=3900.0))
    venue.expire(venue_client_id("c-exp"))
    events = broker.on_block(None) + broker.on_bar(None)  # a block polls once, as a bar does
    assert [(u.status, u.reason) for u in updates(events)] == [
        ("expired", "expired at the exchange")
    ]


def test_a_terminal_status_waits_for_the_trades_behind_it(broker, venue):
    broker.submit(request("c-lag", quantity=0.2, limit_price=3900.0))
    venue.set_price(SYMBOL, 3800.0)
    venue.hide_trades(venue_client_id("c-lag"))  # the order says FILLED, its trades lag
    assert broker.on_bar(None) == []
    assert broker.order_status("c-lag").status == "accepted"
    venue.show_trades()
    events = broker.on_bar(None)
    assert [type(e).__name__ for e in events] == ["Fill", "OrderUpdate"]
    assert statuses(events) == ["filled"] and updates(events)[0].filled_quantity == 0.2
    assert broker.on_bar(None) == []


def test_cancel_open_orders_cancels_each_working_order_once(broker, venue):
    broker.submit(request("c-a", quantity=0.1, limit_price=3000.0))
    broker.submit(request("c-b", "buy", 0.1, limit_price=3100.0))
    broker.submit(request("c-m"))  # filled: nothing to cancel
    events = broker.cancel_open_orders("halted: operator")
    assert [(u.client_order_id, u.status) for u in updates(events)] == [
        ("c-a", "cancelled"),
        ("c-b", "cancelled"),
    ]
    assert len(venue.sent("DELETE", "/api/v3/order")) == 2
    assert broker.cancel_open_orders("again") == []


def test_cancel_of_an_unknown_id_is_refused(broker, venue):
    [update] = broker.cancel("nobody", "x")
    assert (update.status, update.reason) == ("rejected", "cancel refused: unknown order nobody")
    assert venue.calls == []


# -- restarts --------------------------------------------------------------------------------
def test_reconcile_books_the_fills_missed_while_down(venue, waits):
    first = new_broker(venue, waits)
    first.submit(request("c-rest", quantity=1.0, limit_price=3900.0))
    first.submit(request("c-rest2", quantity=0.5, limit_price=3700.0))
    committed = first.snapshot()
    # The service is down: the market trades through the first order and part of the second.
    venue.advance(3600)
    venue.set_price(SYMBOL, 3650.0, volume=1.2)
    restarted = new_broker(venue, waits)
    restarted.restore(committed)
    missed = restarted.reconcile()
    by_order = {u.client_order_id: (u.status, u.filled_quantity) for u in updates(missed)}
    assert by_order == {"c-rest": ("filled", 1.0), "c-rest2": ("partially_filled", 0.2)}
    assert [(f.client_order_id, f.quantity, f.price) for f in fills(missed)] == [
        ("c-rest", 1.0, 3900.0),
        ("c-rest2", pytest.approx(0.2), 3700.0),
    ]
    assert all(f.executed_at == START + timedelta(hours=1) for f in fills(missed))
    trade_scans = [p for p in venue.sent("GET", "/api/v3/myTrades") if "orderId" not in p]
    assert trade_scans and all(
        p["startTime"] == str(int(START.timestamp() * 1000)) for p in trade_scans
    )
    assert len(venue.sent(*ORDER)) == 2  # nothing submitted again
    assert restarted.reconcile() == [] and restarted.on_bar(None) == []
    [working] = restarted.open_orders()
    assert (working.request.client_order_id, working.filled_quantity) == (
        "c-rest2",
        pytest.approx(0.2),
    )


def test_a_poll_that_fails_half_way_returns_what_it_learned_and_leaves_the_rest(venue, waits):
    broker = new_broker(venue, waits, retry_attempts=1)
    for name in ("c-x", "c-y", "c-z"):
        broker.submit(request(name, quantity=0.1, limit_price=3900.0))
    venue.set_price(SYMBOL, 3800.0)  # all three fill at the exchange
    order_z = venue.order(venue_client_id("c-z")).order_id
    # c-x is fetched with its trades; c-y's order is fetched, then its trade list fails.
    venue.fail_network("connection", method="GET", path="/api/v3/myTrades", skip=1)
    with capture_logs() as logs:
        events = broker.on_bar(None)
    assert [(f.client_order_id, f.quantity) for f in fills(events)] == [("c-x", 0.1)]
    assert [(u.client_order_id, u.status) for u in updates(events)] == [("c-x", "filled")]
    # c-y's order was seen filled but nothing of it kept; c-z was not asked about at all.
    assert (broker.order_status("c-y").status, broker.order_status("c-y").filled_quantity) == (
        "accepted",
        0.0,
    )
    assert str(order_z) not in [p.get("orderId") for p in venue.sent(*QUERY)]
    [failed] = logged(logs, "broker.poll_failed")
    assert (failed["client_order_id"], failed["orders_polled"], failed["orders_left"]) == (
        "c-y",
        1,
        2,
    )
    assert "fetch_my_trades BTC/USDT failed after 1 attempt" in failed["error"]
    assert [o.request.client_order_id for o in broker.open_orders()] == ["c-y", "c-z"]
    events = broker.on_bar(None)  # the next bar catches up
    assert [(f.client_order_id, f.quantity) for f in fills(events)] == [("c-y", 0.1), ("c-z", 0.1)]
    assert statuses(events) == ["filled", "filled"]
    assert broker.on_bar(None) == []


def test_snapshot_round_trips_and_keeps_only_the_latest_terminal_orders(venue, waits):
    broker = new_broker(venue, waits, orders_kept=2)
    broker.submit(request("c-open", quantity=0.1, limit_price=3000.0))
    for n in range(3):
        broker.submit(request(f"c-{n}", quantity=0.01))
    restored = new_broker(venue, waits)
    restored.restore(broker.snapshot())
    assert restored.snapshot() == broker.snapshot()
    assert restored.order_status("c-open").status == "accepted"  # open orders are always kept
    assert restored.order_status("c-0") is None
    assert [restored.order_status(c).status for c in ("c-1", "c-2")] == ["filled", "filled"]
    other = CcxtBroker(venue.attach(ccxt.bybit({"enableRateLimit": True})))
    with pytest.raises(ValueError, match="orders of exchange 'binance'"):
        other.restore(broker.snapshot())


# -- an unreachable exchange: the outcome-unknown state ------------------------------------
@pytest.mark.parametrize("outage", ["down_from_the_start", "down", "create_times_out"])
def test_an_order_sent_while_unreachable_that_never_landed_ends_rejected_not_placed(
    broker, venue, outage
):
    if outage != "down_from_the_start":
        broker.lot_rules()  # markets loaded before the outage
    if outage == "create_times_out":  # the lookups answer, every create times out
        venue.fail_network("timeout", method="POST", path="/api/v3/order", times=4)
    else:
        venue.go_down()
    with capture_logs() as logs:
        [update] = broker.submit(request("c-gone"))
    assert (update.client_order_id, update.status, update.broker_order_id) == (
        "c-gone",
        "accepted",
        None,
    )
    assert not update.is_terminal and update.reason.startswith(UNKNOWN)
    assert update.reason.endswith("looked up by its client id at the next poll, not sent again")
    [unknown] = logged(logs, "broker.outcome_unknown")
    assert (unknown["client_order_id"], unknown["venue_client_id"], unknown["side"]) == (
        "c-gone",
        venue_client_id("c-gone"),
        "buy",
    )
    assert "failed after 4 attempt(s)" in unknown["error"]
    posts = len(venue.sent(*ORDER))
    assert posts == (4 if outage == "create_times_out" else 0) and venue.orders == {}
    venue.come_back()
    venue.heal()
    venue.advance(GRACE_S / 2)  # a create sent that recently might still land
    with capture_logs() as logs:
        assert broker.on_bar(None) == []
    [still] = logged(logs, "broker.outcome_still_unknown")
    assert (still["client_order_ids"], still["unknown_for_s"]) == (["c-gone"], GRACE_S / 2)
    assert broker.order_status("c-gone").status == "accepted"
    venue.advance(GRACE_S / 2)
    events = broker.on_bar(None)
    [rejected] = events
    assert (rejected.client_order_id, rejected.status) == ("c-gone", "rejected")
    assert rejected.reason.startswith(NOT_PLACED) and "failed after 4 attempt(s)" in rejected.reason
    assert broker.on_bar(None) == [] and broker.reconcile() == [] and broker.open_orders() == []
    [again] = broker.submit(request("c-gone"))  # the request delivered again: not sent late
    assert again.status == "rejected" and again.reason.startswith(DUPLICATE_SUBMIT)
    assert len(venue.sent(*ORDER)) == posts and venue.orders == {}


def test_an_order_that_landed_before_the_outage_is_adopted_once_by_the_next_poll(
    broker, venue, waits
):
    venue.lose_next_response(*ORDER, then_down=True)  # applied, answer lost, then all fails
    [update] = broker.submit(request("c-landed"))
    assert (update.status, update.broker_order_id) == ("accepted", None)
    assert update.reason.startswith(UNKNOWN)
    placed = venue.order(venue_client_id("c-landed"))
    assert placed.status == "FILLED" and waits == [0.5, 1.0, 2.0]
    assert broker.on_bar(None) == []  # still down: nothing learned, nothing raised
    venue.come_back()
    # Found, but its trades cannot be read: nothing of the find is kept, it stays unknown.
    venue.fail_network("connection", method="GET", path="/api/v3/myTrades", times=4)
    unknown = broker.snapshot()
    assert broker.on_bar(None) == [] and broker.snapshot() == unknown
    assert broker.order_status("c-landed") == update
    events = broker.on_bar(None)
    assert [type(e).__name__ for e in events] == ["OrderUpdate", "Fill", "OrderUpdate"]
    assert [(u.status, u.reason) for u in updates(events)] == [
        ("accepted", FOUND),
        ("filled", None),
    ]
    [fill] = fills(events)
    assert (fill.fill_id, fill.quantity, fill.price) == (
        f"c-landed-t{venue.trades[0].trade_id}",
        0.5,
        PRICE,
    )
    final = updates(events)[-1]
    assert final.broker_order_id == str(placed.order_id) and final.filled_quantity == 0.5
    assert broker.on_bar(None) == [] and broker.reconcile() == []
    assert fills(broker.submit(request("c-landed"))) == []
    assert len(venue.sent(*ORDER)) == 1 and len(venue.orders) == 1
    assert venue.free("BTC") == pytest.approx(0.5)  # bought once


def test_a_restart_while_outcomes_are_unknown_is_settled_by_reconcile(venue, waits):
    first = new_broker(venue, waits)
    venue.fail_network("timeout", method="POST", path="/api/v3/order", times=4)
    first.submit(request("c-never", quantity=0.1))  # never landed
    venue.lose_next_response(*ORDER, then_down=True)
    first.submit(request("c-rests", quantity=1.0, limit_price=3900.0))  # landed; rests
    committed = first.snapshot()
    restarted = new_broker(venue, waits)
    restarted.restore(committed)
    assert restarted.snapshot() == committed
    listed = [
        (o.request.client_order_id, o.status, o.broker_order_id) for o in restarted.open_orders()
    ]
    assert listed == [("c-never", "accepted", None), ("c-rests", "accepted", None)]
    assert restarted.order_status("c-rests").reason.startswith(UNKNOWN)
    with pytest.raises(BrokerError, match="load_markets failed after 4 attempt"):
        restarted.reconcile()  # still down at start: reconcile raises as before, keeps all
    assert restarted.snapshot() == committed
    venue.come_back()
    venue.advance(GRACE_S)
    events = restarted.reconcile()
    resting = venue.order(venue_client_id("c-rests"))
    assert [(u.client_order_id, u.status, u.broker_order_id) for u in updates(events)] == [
        ("c-never", "rejected", None),
        ("c-rests", "accepted", str(resting.order_id)),
    ]
    assert updates(events)[0].reason.startswith(NOT_PLACED) and fills(events) == []
    [working] = restarted.open_orders()
    assert (working.request.client_order_id, working.broker_order_id) == (
        "c-rests",
        str(resting.order_id),
    )
    venue.set_price(SYMBOL, 3800.0)
    events = restarted.on_bar(None)
    assert [(f.client_order_id, f.quantity) for f in fills(events)] == [("c-rests", 1.0)]
    assert statuses(events) == ["filled"]
    assert len(venue.sent(*ORDER)) == 4 + 1 and len(venue.orders) == 1


def test_a_duplicate_submit_while_the_outcome_is_unknown_places_nothing(broker, venue):
    venue.go_down()
    [first] = broker.submit(request("c-twice"))
    venue.come_back()
    calls = len(venue.calls)
    with capture_logs() as logs:
        [again] = broker.submit(request("c-twice"))
        [halted] = broker.reject(request("c-twice"), "trading halted")
    assert (again.status, again.reason) == ("accepted", f"{DUPLICATE_SUBMIT}; {first.reason}")
    assert halted == again
    assert [e["outcome_unknown"] for e in logged(logs, "broker.duplicate_submit")] == [True] * 2
    assert len(venue.calls) == calls and venue.sent(*ORDER) == [] and venue.orders == {}


def test_a_halted_reject_that_cannot_look_the_order_up_is_kept_unknown(broker, venue):
    broker.lot_rules()
    venue.go_down()
    [update] = broker.reject(request("c-halt"), "trading halted")
    assert update.status == "accepted" and update.reason.startswith(UNKNOWN)
    venue.come_back()
    venue.advance(GRACE_S)
    [final] = broker.on_bar(None)
    assert (final.status, final.reason) == ("rejected", "trading halted")
    assert venue.sent(*ORDER) == []


def test_cancel_open_orders_cancels_what_it_can_and_leaves_unknown_orders_to_the_poll(
    broker, venue
):
    broker.submit(request("c-known", quantity=0.1, limit_price=3000.0))
    venue.lose_next_response(*ORDER, then_down=True)
    broker.submit(request("c-unknown", quantity=0.1, limit_price=3100.0))  # landed; rests
    venue.come_back()
    venue.fail_network("connection", method="GET", path="/api/v3/order", times=99)  # lookups
    with capture_logs() as logs:
        events = broker.cancel_open_orders("halted: operator")
    assert [(u.client_order_id, u.status) for u in updates(events)] == [("c-known", "cancelled")]
    [left] = logged(logs, "broker.cancel_left_unknown")
    assert left["client_order_ids"] == ["c-unknown"] and "fetch_order" in left["error"]
    assert broker.order_status("c-unknown").status == "accepted"
    assert venue.order(venue_client_id("c-unknown")).status == "NEW"  # still working there
    assert [o.request.client_order_id for o in broker.open_orders()] == ["c-unknown"]
    venue.heal()
    events = broker.on_bar(None)  # found working: the halt's cancel is carried out
    assert [(u.client_order_id, u.status, u.reason) for u in updates(events)] == [
        ("c-unknown", "accepted", FOUND),
        ("c-unknown", "cancelled", "halted: operator"),
    ]
    assert venue.order(venue_client_id("c-unknown")).status == "CANCELED"
    assert broker.open_orders() == [] and broker.on_bar(None) == []
    assert len(venue.sent("DELETE", "/api/v3/order")) == 2 and len(venue.sent(*ORDER)) == 2


def test_cancel_of_an_unknown_outcome_order_looks_it_up_and_raises_while_it_cannot_tell(
    broker, venue
):
    venue.fail_network("timeout", method="POST", path="/api/v3/order", times=4)
    broker.submit(request("c-never", quantity=0.1))
    venue.lose_next_response(*ORDER, then_down=True)
    broker.submit(request("c-rests", quantity=0.1, limit_price=3100.0))
    before = broker.snapshot()
    with pytest.raises(BrokerError, match="fetch_order BTC/USDT failed after 4 attempt"):
        broker.cancel("c-rests", "operator")
    assert broker.snapshot() == before  # what raises leaves the records as they were
    venue.come_back()
    with pytest.raises(BrokerError, match="cancel of c-never refused: its outcome is still"):
        broker.cancel("c-never", "operator")  # not there yet, but it may still land
    assert broker.snapshot() == before
    events = broker.cancel("c-rests", "operator")
    assert [(u.status, u.reason) for u in updates(events)] == [
        ("accepted", FOUND),
        ("cancelled", "operator"),
    ]
    assert venue.order(venue_client_id("c-rests")).status == "CANCELED"
    venue.advance(GRACE_S)
    [never] = broker.cancel("c-never", "operator")
    assert never.status == "rejected" and never.reason.startswith(NOT_PLACED)
    assert venue.sent("DELETE", "/api/v3/order") != [] and len(venue.orders) == 1


def test_a_poll_while_unreachable_returns_nothing_and_a_later_poll_catches_up(broker, venue):
    broker.submit(request("c-rest", quantity=0.2, limit_price=3900.0))
    venue.go_down()
    broker.submit(request("c-unknown"))  # never placed
    venue.come_back()
    venue.set_price(SYMBOL, 3800.0)  # c-rest fills at the exchange
    venue.go_down()
    venue.advance(30)
    before = broker.snapshot()
    with capture_logs() as logs:
        assert broker.on_bar(None) == []
        assert broker.on_block(None) == []
    assert broker.snapshot() == before
    assert [
        e["event"] for e in logs if e["event"].startswith("broker.") and "call" not in e["event"]
    ] == [
        "broker.poll_failed",
        "broker.outcome_still_unknown",
    ] * 2
    still = logged(logs, "broker.outcome_still_unknown")[0]
    assert (still["client_order_ids"], still["unknown_for_s"]) == (["c-unknown"], 30.0)
    assert "fetch_order BTC/USDT failed after 4 attempt" in still["error"]
    assert logged(logs, "broker.poll_failed")[0]["client_order_id"] == "c-rest"
    venue.come_back()
    venue.advance(GRACE_S)
    events = broker.on_bar(None)
    assert [(u.client_order_id, u.status) for u in updates(events)] == [
        ("c-rest", "filled"),
        ("c-unknown", "rejected"),
    ]
    assert [(f.client_order_id, f.quantity) for f in fills(events)] == [("c-rest", 0.2)]
    assert broker.on_bar(None) == [] and len(venue.sent(*ORDER)) == 1


def test_the_unknown_outcome_reason_masks_registered_secrets(broker, venue):
    # The failed lookups' URLs carry the venue client id: registered as a secret here, it
    # stands for any secret an error text could carry into the update's reason.
    broker.lot_rules()
    venue.go_down()
    sent_id = venue_client_id("c-mask")
    register_secret(sent_id)
    [update] = broker.submit(request("c-mask"))
    assert REDACTED in update.reason and sent_id not in update.reason
    venue.come_back()
    venue.advance(GRACE_S)
    [final] = broker.on_bar(None)
    assert REDACTED in final.reason and sent_id not in final.reason


def test_restore_reads_a_version_1_state_and_refuses_another_version_saying_why(venue, waits):
    broker = new_broker(venue, waits)
    broker.submit(request("c-open", quantity=0.1, limit_price=3000.0))
    state = msgspec.msgpack.decode(broker.snapshot())
    assert state["version"] == 2 and len(state["orders"][0]) == 22
    version_1 = {**state, "version": 1, "orders": [row[:19] for row in state["orders"]]}
    restored = new_broker(venue, waits)
    restored.restore(msgspec.msgpack.encode(version_1))
    assert restored.snapshot() == broker.snapshot()
    newer = {**state, "version": 3, "orders": [[*row, "a later field"] for row in state["orders"]]}
    with pytest.raises(
        ValueError,
        match=r"^ccxt:binance: the committed state is version 3, this build reads version 1 "
        r"or 2: it was written by another build",
    ):
        restored.restore(msgspec.msgpack.encode(newer))
    assert restored.snapshot() == broker.snapshot()


# -- queries ---------------------------------------------------------------------------------
def test_balances_give_free_quote_cash_and_non_zero_positions(broker, venue):
    broker.submit(request("c-buy", quantity=0.5))
    broker.submit(request("c-rest", quantity=1.0, limit_price=3000.0))  # locks 3003 USDT
    balances = broker.balances()
    assert balances.cash == pytest.approx(CASH - 2002.0 - 3003.0)
    assert balances.positions == {"BTC/USDT": pytest.approx(0.5)}
    assert balances.quote_currency == "USDT"


def test_fills_since_lists_only_this_adapters_fills_from_that_time(broker, venue):
    broker.submit(request("c-early", quantity=0.1))
    venue.advance(60)
    later = venue.now()
    broker.submit(request("c-late", quantity=0.2))
    stranger = venue.binance()  # an order placed by someone else on the account
    stranger.create_order(SYMBOL, "market", "buy", 0.3, None, {"clientOrderId": "manual-1"})
    assert [(f.client_order_id, f.quantity) for f in broker.fills_since(START)] == [
        ("c-early", 0.1),
        ("c-late", 0.2),
    ]
    assert [f.client_order_id for f in broker.fills_since(later)] == ["c-late"]
    assert broker.fills_since(later + timedelta(seconds=1)) == []


def test_a_fee_charged_in_bnb_is_passed_through(waits):
    venue = RecordedExchange(
        balances={"USDT": CASH, "BNB": 10.0},
        prices={SYMBOL: PRICE, "BNB/USDT": 250.0},
        commission_asset="BNB",
    )
    broker = new_broker(venue, waits)
    [fill] = fills(broker.submit(request("c-bnb", quantity=0.5)))
    assert fill.fee_currency == "BNB" and fill.fee == pytest.approx(0.5 * PRICE * 0.001 / 250.0)
    assert broker.balances().positions == {
        "BTC/USDT": pytest.approx(0.5),
        "BNB/USDT": pytest.approx(10.0 - 0.008),
    }


def test_lot_rules_come_from_the_loaded_markets(broker, venue):
    rules = broker.lot_rules()
    assert set(rules) == {"BTC/USDT"}  # the only USDT market of the recorded exchangeInfo
    assert (rules[SYMBOL].amount_step, rules[SYMBOL].min_amount) == (0.001, 0.001)
    assert rules[SYMBOL].min_notional == 0.001
    assert venue.sent("GET", "/api/v3/exchangeInfo") != []


def test_fill_ids_too_long_for_an_identifier_use_the_venue_client_id(broker, venue):
    long_id = "rb-" + "z" * 125  # 128 characters
    [fill] = fills(broker.submit(request(long_id, quantity=0.01)))
    assert fill.fill_id == f"{venue_client_id(long_id)}-t{venue.trades[0].trade_id}"
    assert fill.client_order_id == long_id


# -- building the exchange -------------------------------------------------------------------
KEYS = {API_KEY_ENV: "AKIAtestkey1234567890", SECRET_ENV: "s3cr3t-test-value-0987"}


@pytest.mark.parametrize(
    ("live", "confirmed", "missing"),
    [
        (False, False, "--live, [broker] live_confirm = true"),
        (True, False, "[broker] live_confirm = true"),
        (False, True, "--live"),
    ],
)
def test_a_real_exchange_needs_both_live_and_live_confirm(live, confirmed, missing):
    with pytest.raises(ConfigError, match=re.escape(f"(missing: {missing})")):
        exchange_from_settings(
            "binance", sandbox=False, live=live, live_confirmed=confirmed, environ=KEYS
        )


def test_a_live_exchange_is_built_when_both_flags_say_so():
    exchange = exchange_from_settings(
        "binance", sandbox=False, live=True, live_confirmed=True, environ=KEYS
    )
    assert exchange.urls["api"]["private"] == "https://api.binance.com/api/v3"
    assert exchange.enableRateLimit and exchange.options["defaultType"] == "spot"


def test_a_sandbox_exchange_talks_to_the_testnet_with_the_recordings_options():
    exchange = exchange_from_settings("binance", sandbox=True, environ=KEYS)
    assert exchange.urls["api"]["private"] == "https://testnet.binance.vision/api/v3"
    assert exchange.apiKey == KEYS[API_KEY_ENV] and exchange.enableRateLimit
    assert exchange.options["fetchMarkets"]["types"] == ["spot"]
    assert exchange.options["fetchMargins"] is False
    with pytest.raises(ConfigError, match="--live was given but the broker is configured"):
        exchange_from_settings("binance", sandbox=True, live=True, environ=KEYS)


def test_missing_keys_name_the_variables_and_echo_no_value():
    with pytest.raises(ConfigError) as raised:
        exchange_from_settings("binance", sandbox=True, environ={API_KEY_ENV: "AKIApresent123"})
    message = str(raised.value)
    assert SECRET_ENV in message and API_KEY_ENV not in message
    assert "AKIApresent123" not in message and "environment only" in message
    with pytest.raises(ConfigError, match="'notanexchange' is not an exchange ccxt"):
        exchange_from_settings("notanexchange", sandbox=True, environ=KEYS)


def test_the_keys_never_appear_in_logs_errors_or_events():
    stream = io.StringIO()
    configure_logging("execution", level="debug", format="json", stream=stream)
    library = io.StringIO()
    handler = logging.StreamHandler(library)
    ccxt_logger = logging.getLogger(CCXT_LOGGER)
    ccxt_logger.addHandler(handler)
    ccxt_logger.setLevel(logging.DEBUG)
    try:
        venue = RecordedExchange(balances={"USDT": CASH}, prices={SYMBOL: PRICE})
        exchange = venue.attach(exchange_from_settings("binance", sandbox=True, environ=KEYS))
        broker = CcxtBroker(exchange, sleep=lambda _: None)
        events = broker.submit(request("c-ok"))
        venue.fail_next("-2010", method="POST")
        events += broker.submit(request("c-no"))
        venue.fail_network("connection", method="POST", path="/api/v3/order", times=4)
        events += broker.submit(request("c-unknown"))  # its reason carries the error text
        assert broker.order_status("c-unknown").reason.startswith(UNKNOWN)
        venue.fail_network("connection", path="/api/v3/account", times=99)
        with pytest.raises(BrokerError) as raised:
            broker.balances()
        structlog.get_logger("test").error("broker.down", error=raised.value, exc_info=raised.value)
    finally:
        ccxt_logger.removeHandler(handler)
        ccxt_logger.setLevel(logging.NOTSET)
    ours, theirs = stream.getvalue(), library.getvalue()
    # The run logged what it did, ccxt logged its requests (headers included), and the key
    # really went to the exchange: the only reason it is missing below is the masking.
    events_logged = [json.loads(line)["event"] for line in ours.splitlines()]
    assert {
        "broker.order_sent",
        "broker.order_rejected",
        "broker.call_retry",
        "broker.outcome_unknown",
    } <= set(events_logged)
    assert "X-MBX-APIKEY" in theirs and REDACTED in theirs
    assert {call.api_key for call in venue.calls if call.api_key} == {KEYS[API_KEY_ENV]}
    text = ours + theirs + str(raised.value) + repr(events)
    for secret in KEYS.values():
        assert secret not in text
