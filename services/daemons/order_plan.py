"""From target quantities to the OrderRequests that reach them: differences to the book, the
minimum notional, lot rounding and the pre-trade checks, in a deterministic order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from engine.config import PortfolioConfig, RiskConfig
from engine.events import OrderRequest
from engine.portfolio.lots import LotRules, round_quantity
from engine.risk.pretrade import order_block_reason


@dataclass
class OrderPlan:
    """The orders of one rebalance, sells first, and what was held back and why."""

    requests: list[OrderRequest] = field(default_factory=list)
    blocked: list[tuple[str, str]] = field(default_factory=list)  # symbol, reason
    turnover: float = 0.0  # traded value / equity
    # Buys were scaled by this factor to fit the cash (1.0: they fitted), and the figures.
    buy_scale: float = 1.0
    buys_value: float = 0.0  # quote currency at the conservative price, fees included
    cash_available: float = 0.0


def plan_orders(
    *,
    rebalance_id: str,
    asof: datetime,
    targets: dict[str, float],
    positions: dict[str, float],
    prices: dict[str, float],
    last_prices: dict[str, float],
    equity: float,
    lot_rules: dict[str, LotRules],
    default_rules: LotRules,
    portfolio: PortfolioConfig,
    risk: RiskConfig,
    reduce_only: bool = False,
    cash: float | None = None,
    fee_rate: float = 0.0,
) -> OrderPlan:
    """Orders taking ``positions`` to ``targets`` (quantities) at ``prices``.

    Symbols without a price are left alone (nothing can be done at a known price). With
    ``reduce_only`` every order only moves a position towards zero (risk cuts, a flatten).
    Given the book's ``cash``, buys are scaled down together until they fit it plus what
    the sells free, every price ``portfolio.cash_buffer`` against the account and
    ``fee_rate`` paid on both (see ``fit_buys_to_cash``).
    """
    sized: list[tuple[float, OrderRequest]] = []
    plan = OrderPlan()
    for symbol in sorted(set(targets) | set(positions)):
        price = prices.get(symbol)
        if price is None:
            continue
        held = positions.get(symbol, 0.0)
        delta = targets.get(symbol, 0.0) - held
        rules = lot_rules.get(symbol, default_rules)
        if targets.get(symbol, 0.0) == 0.0 and held != 0.0:
            # Closing a position sells all of it: rounding must not leave dust behind.
            delta = -held
        else:
            delta = round_quantity(delta, price, rules)
        if delta == 0.0 or abs(delta) * price <= max(portfolio.min_order_notional, 1e-9 * equity):
            continue
        if reduce_only and (held == 0.0 or delta * held > 0 or abs(delta) > abs(held) + 1e-12):
            continue
        if not rules.trading:  # the exchange would reject it: hold back, say why
            plan.blocked.append((symbol, "market halted: the exchange lists it as not trading"))
            continue
        reducing = reduce_only or (delta * held < 0 and abs(delta) <= abs(held) + 1e-12)
        reason = order_block_reason(delta, price, last_prices.get(symbol), risk, reducing)
        if reason is not None:
            plan.blocked.append((symbol, reason))
            continue
        # Order value relative to equity, rounded so that float noise cannot reorder equal
        # buys (a new holding's value is weight x equity whatever its price).
        sized.append(
            (
                round(delta * price / equity, 9),
                OrderRequest(
                    client_order_id=f"{rebalance_id}-{symbol}",
                    rebalance_id=rebalance_id,
                    asof=asof,
                    symbol=symbol,
                    side="buy" if delta > 0 else "sell",
                    quantity=abs(delta),
                    reference_price=price,
                    reduce_only=reducing,
                ),
            )
        )
    if cash is not None and not reduce_only:
        sized = _fit_buys_to_cash(
            sized, cash, fee_rate, portfolio, prices, lot_rules, default_rules, equity, plan
        )
    # Sells first, then buys from the smallest: cash is freed before it is spent. The sort
    # is stable, so equal values go by symbol: the same orders whatever order the symbols
    # first arrived in (vectorbt's call_seq="auto" keeps column order, alphabetical here).
    sized.sort(key=lambda item: item[0])
    plan.requests = [request for _, request in sized]
    plan.turnover = sum(abs(value) for value, _ in sized)
    return plan


def _fit_buys_to_cash(
    sized: list[tuple[float, OrderRequest]],
    cash: float,
    fee_rate: float,
    portfolio: PortfolioConfig,
    prices: dict[str, float],
    lot_rules: dict[str, LotRules],
    default_rules: LotRules,
    equity: float,
    plan: OrderPlan,
) -> list[tuple[float, OrderRequest]]:
    """Scale every buy by one factor so that, at prices ``cash_buffer`` worse than the
    decision close, the buys and their fees fit the cash plus the sells' proceeds after fees.

    One factor keeps the target's proportions; the broker still cuts a buy that does not fit
    (prices moved further than the buffer), so this only makes that rare.
    """
    buffer = portfolio.cash_buffer
    available = cash
    needed = 0.0
    for _, request in sized:
        value = request.quantity * prices[request.symbol]
        if request.side == "sell":
            available += value * (1.0 - buffer) * (1.0 - fee_rate)
        else:
            needed += value * (1.0 + buffer) * (1.0 + fee_rate)
    plan.buys_value, plan.cash_available = needed, available
    if needed <= available or needed == 0.0:
        return sized
    scale = max(available, 0.0) / needed
    plan.buy_scale = scale
    fitted: list[tuple[float, OrderRequest]] = []
    for value, request in sized:
        if request.side == "sell":
            fitted.append((value, request))
            continue
        price = prices[request.symbol]
        rules = lot_rules.get(request.symbol, default_rules)
        quantity = round_quantity(request.quantity * scale, price, rules)
        if quantity <= 0.0 or quantity * price <= max(portfolio.min_order_notional, 1e-9 * equity):
            continue
        smaller = msgspec.structs.replace(request, quantity=quantity)
        fitted.append((round(quantity * price / equity, 9), smaller))
    return fitted
