"""The paper broker's market model: limit orders, slippage and square-root impact, the volume
cap with partial fills that expire, maker/taker fees, latency and exchange market rules. Each
price is recomputed here from the bar and the stated formula, not read back from the broker."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from brokers.fill_model import BarQuote, FillModel
from brokers.protocol import Broker
from brokers.simulated import SimulatedBroker
from engine.events import BarSet, Fill, OrderRequest, OrderUpdate
from engine.portfolio.lots import LotRules

DAY0 = datetime(2024, 1, 1, tzinfo=UTC)
SYMBOL = "BTC/USDT"


def day(n: int) -> datetime:
    return DAY0 + timedelta(days=n)


def bar(n: int, o: float, h: float, low: float, c: float, volume: float | None = 100.0) -> BarSet:
    return BarSet(
        timeframe="1d",
        bar_open=day(n),
        symbols=(SYMBOL,),
        open=(o,),
        high=(h,),
        low=(low,),
        close=(c,),
        volume=None if volume is None else (volume,),
    )


def order(quantity: float, side: str = "buy", cid: str = "o1", asof: int = 1, **extra):
    return OrderRequest(
        client_order_id=cid,
        rebalance_id="rb-1",
        asof=day(asof),
        symbol=SYMBOL,
        side=side,
        quantity=quantity,
        reference_price=100.0,
        **extra,
    )


def fills(events) -> list[Fill]:
    return [e for e in events if isinstance(e, Fill)]


def statuses(events) -> list[str]:
    return [e.status for e in events if isinstance(e, OrderUpdate)]


def test_the_simulated_broker_is_a_broker():
    assert isinstance(SimulatedBroker(initial_cash=1.0), Broker)


def test_a_market_buy_pays_fixed_slippage_and_square_root_impact_on_the_open():
    broker = SimulatedBroker(
        initial_cash=1e6, fee_rate=0.001, slippage_bps=5.0, impact_coefficient=0.1
    )
    broker.submit(order(4.0))
    [fill] = fills(broker.on_bar(bar(1, 100.0, 110.0, 90.0, 105.0, volume=400.0)))
    expected = 100.0 * (1 + 5e-4 + 0.1 * math.sqrt(4.0 / 400.0))  # 100.6
    assert fill.price == pytest.approx(expected, rel=1e-12)
    assert fill.fee == pytest.approx(4.0 * expected * 0.001, rel=1e-12)
    assert broker.cash == pytest.approx(1e6 - 4.0 * expected * 1.001, rel=1e-12)


def test_a_market_sell_receives_the_price_less_slippage_and_impact():
    broker = SimulatedBroker(initial_cash=0.0, fee_rate=0.0, slippage_bps=10.0)
    broker.positions[SYMBOL] = 2.0
    broker.submit(order(2.0, side="sell"))
    [fill] = fills(broker.on_bar(bar(1, 50.0, 55.0, 45.0, 52.0)))
    assert fill.price == pytest.approx(50.0 * (1 - 1e-3), rel=1e-12)


def test_next_vwap_fills_at_the_mean_of_open_high_low_close():
    broker = SimulatedBroker(initial_cash=1e6, fee_rate=0.0, fill_price="next_vwap")
    broker.submit(order(1.0))
    [fill] = fills(broker.on_bar(bar(1, 100.0, 120.0, 90.0, 110.0)))
    assert fill.price == 105.0


def test_a_volume_cap_fills_part_per_bar_and_the_rest_on_the_next_bars():
    broker = SimulatedBroker(
        initial_cash=1e6, fee_rate=0.0, max_participation=0.1, order_ttl_bars=0
    )
    broker.submit(order(25.0))
    first = broker.on_bar(bar(1, 100.0, 101.0, 99.0, 100.0, volume=100.0))
    second = broker.on_bar(bar(2, 102.0, 103.0, 101.0, 102.0, volume=100.0))
    third = broker.on_bar(bar(3, 104.0, 105.0, 103.0, 104.0, volume=100.0))
    assert [f.quantity for f in fills(first + second + third)] == [10.0, 10.0, 5.0]
    assert [f.fill_id for f in fills(first + second + third)] == ["o1-f1", "o1-f2", "o1-f3"]
    assert statuses(first) == ["partially_filled"] and statuses(second) == ["partially_filled"]
    [done] = [e for e in third if isinstance(e, OrderUpdate)]
    assert done.status == "filled" and done.filled_quantity == 25.0
    assert done.average_price == pytest.approx((10 * 100 + 10 * 102 + 5 * 104) / 25, rel=1e-12)
    assert broker.positions == {SYMBOL: 25.0} and broker.open_order_count == 0


def test_the_volume_cap_is_shared_by_the_orders_of_a_symbol_in_arrival_order():
    broker = SimulatedBroker(initial_cash=1e6, fee_rate=0.0, max_participation=0.1)
    broker.submit(order(6.0, cid="a"))
    broker.submit(order(6.0, cid="b"))
    events = broker.on_bar(bar(1, 100.0, 101.0, 99.0, 100.0, volume=100.0))
    assert [(f.client_order_id, f.quantity) for f in fills(events)] == [("a", 6.0), ("b", 4.0)]


def test_what_the_cap_leaves_expires_after_the_configured_bars():
    broker = SimulatedBroker(
        initial_cash=1e6, fee_rate=0.0, max_participation=0.1, order_ttl_bars=2
    )
    broker.submit(order(50.0))
    broker.on_bar(bar(1, 100.0, 101.0, 99.0, 100.0, volume=100.0))
    events = broker.on_bar(bar(2, 100.0, 101.0, 99.0, 100.0, volume=100.0))
    terminal = [e for e in events if isinstance(e, OrderUpdate)][-1]
    assert terminal.status == "expired" and terminal.filled_quantity == 20.0
    assert terminal.reason == "expired after 2 bar(s): filled 20 of 50"
    assert broker.open_order_count == 0
    assert broker.on_bar(bar(3, 100.0, 101.0, 99.0, 100.0)) == []


def test_a_buy_limit_marketable_at_the_open_is_a_taker_capped_at_its_limit():
    broker = SimulatedBroker(
        initial_cash=1e6, fee_rate=0.002, maker_fee_rate=0.0005, slippage_bps=50.0
    )
    broker.submit(order(1.0, order_type="limit", limit_price=100.2))
    [fill] = fills(broker.on_bar(bar(1, 100.0, 101.0, 95.0, 100.0)))
    assert fill.price == 100.2  # the open plus 50 bps would be 100.5: the limit caps it
    assert fill.fee == pytest.approx(100.2 * 0.002, rel=1e-12)


def test_a_resting_buy_limit_fills_at_its_limit_as_a_maker_when_the_low_reaches_it():
    broker = SimulatedBroker(
        initial_cash=1e6, fee_rate=0.002, maker_fee_rate=0.0005, slippage_bps=50.0
    )
    broker.submit(order(2.0, order_type="limit", limit_price=97.0))
    [fill] = fills(broker.on_bar(bar(1, 100.0, 101.0, 96.5, 99.0)))
    assert fill.price == 97.0 and fill.fee == pytest.approx(2 * 97.0 * 0.0005, rel=1e-12)


def test_a_limit_order_the_market_never_reaches_expires_unfilled():
    broker = SimulatedBroker(initial_cash=1e6, order_ttl_bars=1)
    events = broker.submit(order(1.0, side="sell", order_type="limit", limit_price=200.0))
    assert statuses(events) == ["accepted"]
    events = broker.on_bar(bar(1, 100.0, 150.0, 95.0, 120.0))
    assert statuses(events) == ["expired"] and not fills(events)
    assert broker.cash == 1e6


def test_a_resting_sell_limit_gapped_through_fills_at_the_better_open():
    broker = SimulatedBroker(initial_cash=0.0, fee_rate=0.0, order_ttl_bars=0)
    broker.positions[SYMBOL] = 1.0
    broker.submit(order(1.0, side="sell", order_type="limit", limit_price=120.0))
    assert fills(broker.on_bar(bar(1, 100.0, 110.0, 95.0, 105.0))) == []
    [fill] = fills(broker.on_bar(bar(2, 125.0, 130.0, 124.0, 128.0)))
    assert fill.price == 125.0


def test_latency_moves_the_fill_to_the_first_bar_opening_after_the_order_arrives():
    broker = SimulatedBroker(initial_cash=1e6, fee_rate=0.0, latency_s=3600.0)
    broker.submit(order(1.0, asof=1))
    assert fills(broker.on_bar(bar(1, 100.0, 101.0, 99.0, 100.0))) == []  # opens before arrival
    [fill] = fills(broker.on_bar(bar(2, 107.0, 108.0, 106.0, 107.0)))
    assert fill.price == 107.0


@pytest.mark.parametrize(
    ("quantity", "reason"),
    [
        (0.0015, "LOT_SIZE: quantity 0.0015 of BTC/USDT is not a multiple of its step 0.001"),
        (0.001, "LOT_SIZE: quantity 0.001 of BTC/USDT is below the minimum amount 0.002"),
        (0.004, "MIN_NOTIONAL: 0.004 BTC/USDT at 100 is worth 0.4, below the minimum 5"),
    ],
)
def test_orders_breaking_the_market_rules_are_rejected_with_the_rule(quantity, reason):
    rules = {SYMBOL: LotRules(amount_step=0.001, min_amount=0.002, min_notional=5.0)}
    broker = SimulatedBroker(initial_cash=1e6, lot_rules=rules)
    events = broker.submit(order(quantity))
    assert [(e.status, e.reason) for e in events] == [("rejected", reason)]
    assert broker.open_order_count == 0
    assert [(e.status) for e in broker.submit(order(0.05, cid="ok"))] == ["accepted"]


def test_an_unknown_symbol_is_rejected_once_the_market_is_known():
    broker = SimulatedBroker(initial_cash=1e6)
    broker.on_bar(bar(0, 100.0, 101.0, 99.0, 100.0))
    request = OrderRequest(
        client_order_id="x", rebalance_id="rb", asof=day(1), symbol="DOGE/USDT", side="buy",
        quantity=1.0,
    )  # fmt: skip
    [update] = broker.submit(request)
    assert update.status == "rejected" and update.reason.startswith("unknown symbol DOGE/USDT")


def test_an_order_on_a_halted_market_is_rejected_and_trades_nothing():
    broker = SimulatedBroker(initial_cash=1e6, lot_rules={SYMBOL: LotRules(trading=False)})
    broker.positions[SYMBOL] = 2.0
    events = broker.submit(order(1.0)) + broker.submit(order(1.0, side="sell", cid="o2"))
    halted = "HALTED: BTC/USDT is not trading (the exchange lists the market inactive)"
    assert [(e.status, e.reason) for e in events] == [("rejected", halted)] * 2
    assert broker.on_bar(bar(1, 100.0, 101.0, 99.0, 100.0)) == []
    assert broker.cash == 1e6 and broker.positions == {SYMBOL: 2.0}
    assert broker.open_order_count == 0


@pytest.mark.parametrize(
    ("limit", "tick", "shown"),
    [(100.005, 0.01, "100.005 of BTC/USDT is not a multiple of its tick 0.01"),
     (0.35, 0.1, "0.35 of BTC/USDT is not a multiple of its tick 0.1"),
     # BTCUSDT's recorded tick: 4e9 ticks, where a tolerance of 1e-9 of them passes anything
     (4000.0000005, 1e-6, "4000.0000005 of BTC/USDT is not a multiple of its tick 1e-06")],
)  # fmt: skip
def test_a_limit_price_off_the_tick_is_rejected_with_the_price_filter(limit, tick, shown):
    broker = SimulatedBroker(initial_cash=1e6, lot_rules={SYMBOL: LotRules(price_step=tick)})
    [update] = broker.submit(order(1.0, order_type="limit", limit_price=limit))
    assert (update.status, update.reason) == ("rejected", f"PRICE_FILTER: limit price {shown}")
    assert broker.open_order_count == 0


@pytest.mark.parametrize(
    ("limit", "tick"),
    [(4000.01, 0.01), (0.3, 0.1), (100.0, 0.01), (4000.000001, 1e-6), (25.0, 5.0)],
)
def test_a_limit_price_on_the_tick_is_accepted_float_error_aside(limit, tick):
    broker = SimulatedBroker(initial_cash=1e6, lot_rules={SYMBOL: LotRules(price_step=tick)})
    [update] = broker.submit(order(1.0, order_type="limit", limit_price=limit))
    assert (update.status, update.reason) == ("accepted", None)


def test_a_market_order_is_not_price_checked():
    broker = SimulatedBroker(
        initial_cash=1e6, fee_rate=0.0, lot_rules={SYMBOL: LotRules(price_step=0.01)}
    )
    request = OrderRequest(
        client_order_id="m", rebalance_id="rb", asof=day(1), symbol=SYMBOL, side="buy",
        quantity=1.0, reference_price=100.005,  # off the tick
    )  # fmt: skip
    assert statuses(broker.submit(request)) == ["accepted"]
    [fill] = fills(broker.on_bar(bar(1, 100.005, 101.0, 99.0, 100.0)))
    assert fill.price == 100.005


def test_a_buy_the_cash_cannot_pay_is_scaled_to_the_cash_and_says_so():
    broker = SimulatedBroker(initial_cash=1_001.0, fee_rate=0.001)
    broker.submit(order(20.0))
    with capture_logs() as logs:
        events = broker.on_bar(bar(1, 100.0, 101.0, 99.0, 100.0))
    [fill] = fills(events)
    assert fill.quantity == pytest.approx(1_001.0 / (100.0 * 1.001), rel=1e-12)
    assert statuses(events) == ["cancelled"]
    assert [e["event"] for e in logs] == ["broker.buy_scaled_to_cash"]
    assert broker.cash == pytest.approx(0.0, abs=1e-9)


def test_cancel_status_open_orders_balances_and_fills_since():
    broker = SimulatedBroker(initial_cash=1e6, fee_rate=0.0, order_ttl_bars=0)
    broker.submit(order(1.0, cid="m"))
    broker.submit(order(1.0, cid="l", order_type="limit", limit_price=50.0))
    assert [o.request.client_order_id for o in broker.open_orders()] == ["m", "l"]
    broker.on_bar(bar(1, 100.0, 101.0, 99.0, 100.0))
    assert [o.request.client_order_id for o in broker.open_orders()] == ["l"]
    assert broker.order_status("m").status == "filled" and broker.order_status("nope") is None
    [cancelled] = broker.cancel("l", "operator")
    assert (cancelled.status, cancelled.reason) == ("cancelled", "operator")
    [again] = broker.cancel("l", "operator")  # a terminal order answers its state
    assert again.status == "cancelled" and broker.open_orders() == []
    [unknown] = broker.cancel("zzz", "operator")
    assert unknown.status == "rejected" and "unknown order zzz" in unknown.reason
    balances = broker.balances()
    assert balances.cash == 1e6 - 100.0 and balances.positions == {SYMBOL: 1.0}
    assert [f.fill_id for f in broker.fills_since(day(1))] == ["m-f1"]
    assert broker.fills_since(day(2)) == []


def test_a_partly_filled_order_survives_a_snapshot_and_finishes_on_the_restored_account():
    settings = dict(initial_cash=1e6, fee_rate=0.0, max_participation=0.1, order_ttl_bars=0)
    broker = SimulatedBroker(**settings)
    broker.submit(order(15.0))
    broker.on_bar(bar(1, 100.0, 101.0, 99.0, 100.0, volume=100.0))
    restored = SimulatedBroker(**settings)
    restored.restore(broker.snapshot())
    assert restored.state() == broker.state()
    rest = restored.on_bar(bar(2, 100.0, 101.0, 99.0, 100.0, volume=100.0))
    assert [(f.fill_id, f.quantity) for f in fills(rest)] == [("o1-f2", 5.0)]
    assert statuses(rest) == ["filled"] and restored.positions == {SYMBOL: 15.0}


def test_fill_model_settings_are_checked_naming_the_setting():
    with pytest.raises(ValueError, match="max_participation is a fraction"):
        FillModel(max_participation=2.0)
    with pytest.raises(ValueError, match="slippage_bps must be finite and >= 0"):
        FillModel(slippage_bps=-1.0)


def test_impact_never_takes_a_sell_price_below_half_the_reference():
    model = FillModel(impact_coefficient=1.0)
    quote = model.quote("sell", None, BarQuote(100.0, 100.0, 100.0, 100.0, 1.0), False)
    assert model.price("sell", quote, 100.0, 1.0, None) == 50.0
