"""Lot rules come from ccxt's real parse of a recorded Binance exchangeInfo; rounding never
buys more than sized."""

from __future__ import annotations

import json
import math

import ccxt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.portfolio import LotRules, lot_rules_from_ccxt, lots, round_quantity
from tests.fixtures.ccxt_router import RECORDINGS, BinanceRouter, offline_binance


def recorded_filters(market_id: str) -> dict[str, dict]:
    info = json.loads((RECORDINGS / "GET_api_v3_exchangeInfo_consistent.json").read_text())
    (symbol,) = [s for s in info["symbols"] if s["symbol"] == market_id]
    return {f["filterType"]: f for f in symbol["filters"]}


def test_precision_modes_are_ccxts():
    assert (lots.TICK_SIZE, lots.DECIMAL_PLACES) == (ccxt.TICK_SIZE, ccxt.DECIMAL_PLACES)


def test_rules_from_ccxts_own_parse_of_the_recorded_exchange_info():
    exchange = offline_binance(BinanceRouter(now_ms=1_700_000_000_000, listed_ms=1_699_000_000_000))
    market = exchange.load_markets()["BTC/USDT"]
    rules = lot_rules_from_ccxt(market, exchange.precisionMode)

    filters = recorded_filters("BTCUSDT")
    assert rules.amount_step == float(filters["LOT_SIZE"]["stepSize"])  # 0.001
    assert rules.min_amount == float(filters["LOT_SIZE"]["minQty"])  # 0.001
    # The recording has both MIN_NOTIONAL (0.001) and NOTIONAL (10); ccxt 4.5 reads MIN_NOTIONAL
    # first, so that is the minimum cost its market (and so this rule) carries.
    assert rules.min_notional == float(filters["MIN_NOTIONAL"]["minNotional"])
    assert rules.price_step == float(filters["PRICE_FILTER"]["tickSize"])  # 0.000001
    assert rules.trading  # status TRADING: ccxt's active True
    assert exchange.precisionMode == ccxt.TICK_SIZE


def test_decimal_places_precision_is_a_number_of_decimals():
    market = {"precision": {"amount": 3}, "limits": {"amount": {"min": 0.01}, "cost": {}}}
    assert lot_rules_from_ccxt(market, lots.DECIMAL_PLACES) == LotRules(0.001, 0.01, 0.0)


@pytest.mark.parametrize(
    ("mode", "precision", "tick"),
    [(lots.TICK_SIZE, 0.01, 0.01), (lots.DECIMAL_PLACES, 2, 0.01), (lots.DECIMAL_PLACES, 0, 1.0)],
)
def test_the_price_tick_is_read_in_both_precision_modes(mode, precision, tick):
    market = {"symbol": "ETH/USDT", "precision": {"amount": None, "price": precision}}
    rules = lot_rules_from_ccxt(market, mode)
    assert rules.price_step == tick and rules.amount_step is None


@pytest.mark.parametrize("precision", [0.0, -0.01])
def test_a_price_tick_not_above_zero_is_refused_naming_the_market(precision):
    market = {"symbol": "ETH/USDT", "precision": {"amount": 0.001, "price": precision}}
    with pytest.raises(ValueError, match="market 'ETH/USDT' has price step .*expected > 0"):
        lot_rules_from_ccxt(market, lots.TICK_SIZE)


@pytest.mark.parametrize(
    ("market", "trading"),
    [({"active": False}, False), ({"active": None}, True), ({}, True), ({"active": True}, True)],
)
def test_only_an_explicitly_inactive_market_is_not_trading(market, trading):
    assert lot_rules_from_ccxt({"symbol": "ETH/USDT", **market}).trading is trading


def test_missing_fields_mean_no_rule():
    market = {"precision": {"amount": None}, "limits": {"amount": {"min": None}}}
    assert lot_rules_from_ccxt(market) == LotRules(None, 0.0, 0.0, price_step=None, trading=True)


def test_an_unsupported_precision_mode_is_refused():
    with pytest.raises(ValueError, match="precision_mode must be TICK_SIZE .* received 3"):
        lot_rules_from_ccxt({"symbol": "X/Y", "precision": {"amount": 4}}, 3)


@pytest.mark.parametrize(
    ("quantity", "step", "expected"),
    [
        (0.3, 0.1, 0.3),  # 0.3 / 0.1 is 2.9999999999999996 in binary: still three steps
        (0.29999, 0.1, 0.2),
        (-0.15, 0.1, -0.1),  # the size rounds down, the sign stays
        (12345.6789, 0.01, 12345.67),
        (1.234567891, 1e-8, 1.23456789),
        (7.0, 5.0, 5.0),
        (0.7, 0.7, 0.7),
    ],
)
def test_quantity_rounds_down_to_the_step(quantity, step, expected):
    assert round_quantity(quantity, 100.0, LotRules(amount_step=step)) == expected


def test_below_the_minimum_amount_or_notional_is_zero():
    rules = LotRules(amount_step=0.001, min_amount=0.001, min_notional=10.0)
    assert round_quantity(0.0009, 50_000.0, rules) == 0.0  # rounds to 0
    assert round_quantity(0.0002, 50_000.0, LotRules(min_amount=0.001)) == 0.0
    assert round_quantity(0.0019, 5_000.0, rules) == 0.0  # 0.001 x 5000 = 5 < 10
    assert round_quantity(-0.0021, 5_000.0, rules) == -0.002  # 0.002 x 5000 = 10: allowed


def test_without_a_step_the_quantity_is_kept():
    assert round_quantity(0.123456789, 10.0, LotRules()) == 0.123456789


def test_bad_numbers_are_refused():
    with pytest.raises(ValueError, match="quantity must be finite, received nan"):
        round_quantity(math.nan, 1.0, LotRules())
    with pytest.raises(ValueError, match="price must be finite and > 0, received 0.0"):
        round_quantity(1.0, 0.0, LotRules())


@given(
    quantity=st.floats(-1e6, 1e6, allow_nan=False),
    step=st.sampled_from([1e-8, 1e-5, 0.001, 0.01, 0.1, 0.5, 1.0, 10.0]),
)
def test_rounding_never_adds_and_loses_less_than_a_step(quantity, step):
    rounded = round_quantity(quantity, 1.0, LotRules(amount_step=step))
    assert abs(rounded) <= abs(quantity) + 1e-9 * step + 1e-12 * abs(quantity)
    assert abs(quantity) - abs(rounded) < step * (1 + 1e-9)
    assert rounded == 0.0 or math.copysign(1.0, rounded) == math.copysign(1.0, quantity)
