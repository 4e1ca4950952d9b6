"""Orders as differences to the book, and buys sized to fit the cash the sells free at a
conservative price: checked against the arithmetic done here by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine.config import PortfolioConfig, RiskConfig
from engine.portfolio.lots import LotRules
from services.daemons.order_plan import plan_orders

T = datetime(2024, 3, 1, tzinfo=UTC)
RISK = RiskConfig(enabled=False, price_collar=0.0)


def plan(targets, positions, prices, cash, buffer=0.0, fee=0.0, step=None):
    return plan_orders(
        rebalance_id="rb-1",
        asof=T,
        targets=targets,
        positions=positions,
        prices=prices,
        last_prices=prices,
        equity=cash + sum(q * prices[s] for s, q in positions.items()),
        lot_rules={},
        default_rules=LotRules(amount_step=step),
        portfolio=PortfolioConfig(cash_buffer=buffer),
        risk=RISK,
        cash=cash,
        fee_rate=fee,
    )


def test_buys_that_fit_the_cash_and_the_sells_proceeds_are_left_alone():
    result = plan({"A": 5.0, "B": 10.0}, {"A": 10.0}, {"A": 100.0, "B": 50.0}, cash=0.0)
    # sell 5 A frees 500; buy 10 B costs 500: fits exactly with no buffer and no fee.
    assert [(o.side, o.symbol, o.quantity) for o in result.requests] == [
        ("sell", "A", 5.0),
        ("buy", "B", 10.0),
    ]
    assert result.buy_scale == 1.0


def test_buys_are_scaled_together_to_the_cash_at_the_buffered_price_with_fees():
    buffer, fee = 0.01, 0.001
    prices = {"A": 100.0, "B": 50.0, "C": 20.0}
    result = plan({"A": 5.0, "B": 10.0, "C": 25.0}, {"A": 10.0}, prices, 0.0, buffer, fee)
    freed = 5 * 100.0 * (1 - buffer) * (1 - fee)
    wanted = (10 * 50.0 + 25 * 20.0) * (1 + buffer) * (1 + fee)
    scale = freed / wanted
    assert result.buy_scale == pytest.approx(scale, rel=1e-12)
    buys = {o.symbol: o.quantity for o in result.requests if o.side == "buy"}
    assert buys == pytest.approx({"B": 10.0 * scale, "C": 25.0 * scale}, rel=1e-12)
    spent = sum(q * prices[s] for s, q in buys.items()) * (1 + buffer) * (1 + fee)
    assert spent == pytest.approx(freed, rel=1e-12)
    assert [o.quantity for o in result.requests if o.side == "sell"] == [5.0]  # sells untouched


def test_scaled_buys_are_rounded_down_to_the_lot_step():
    result = plan({"B": 10.0}, {}, {"B": 50.0}, cash=333.0, step=1.0)
    [buy] = result.requests
    assert buy.quantity == 6.0  # 333 / 500 of 10 is 6.66: whole units, rounded down


def test_without_the_cash_the_plan_is_not_fitted():
    result = plan_orders(
        rebalance_id="rb-1",
        asof=T,
        targets={"B": 10.0},
        positions={},
        prices={"B": 50.0},
        last_prices={"B": 50.0},
        equity=100.0,
        lot_rules={},
        default_rules=LotRules(),
        portfolio=PortfolioConfig(),
        risk=RISK,
    )
    assert [o.quantity for o in result.requests] == [10.0] and result.buy_scale == 1.0


def test_a_halted_market_gets_no_order_and_is_named_as_held_back():
    prices = {"A": 100.0, "B": 50.0}
    result = plan_orders(
        rebalance_id="rb-1",
        asof=T,
        targets={"A": 0.0, "B": 10.0},
        positions={"A": 5.0},
        prices=prices,
        last_prices=prices,
        equity=1_000.0 + 500.0,
        lot_rules={"A": LotRules(trading=False)},
        default_rules=LotRules(),
        portfolio=PortfolioConfig(),
        risk=RISK,
        cash=1_000.0,
    )
    # The sell of A would be rejected by the exchange: it is not sent, and the plan says why.
    assert [(o.side, o.symbol) for o in result.requests] == [("buy", "B")]
    assert result.blocked == [("A", "market halted: the exchange lists it as not trading")]
