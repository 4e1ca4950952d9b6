"""Round an order quantity to what an exchange accepts: its step, minimum amount and notional."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = ["DECIMAL_PLACES", "TICK_SIZE", "LotRules", "lot_rules_from_ccxt", "round_quantity"]

# ccxt's precision modes (ccxt.DECIMAL_PLACES, ccxt.TICK_SIZE), copied so that this module does
# not import ccxt and its hundred exchanges; a test checks they still match.
DECIMAL_PLACES = 2
TICK_SIZE = 4

# A quantity within this many steps below a whole number of steps counts as that number, so
# float error (0.3 / 0.1 = 2.9999999999999996) does not cost a whole step.
_STEP_TOLERANCE = 1e-9


@dataclass(frozen=True)
class LotRules:
    """An exchange's order rules for one market: quantity, price tick and trading status.

    Attributes
    ----------
    amount_step
        Quantity increment, in base units (None: any quantity).
    min_amount
        Smallest quantity accepted, in base units.
    min_notional
        Smallest quantity x price accepted, in quote units.
    price_step
        Limit price increment (the tick), in quote units (None: any price).
    trading
        False when the exchange lists the market as not trading (halted, in a break): it
        accepts no order on it.
    """

    amount_step: float | None = None
    min_amount: float = 0.0
    min_notional: float = 0.0
    price_step: float | None = None
    trading: bool = True


def lot_rules_from_ccxt(market: dict[str, Any], precision_mode: int = TICK_SIZE) -> LotRules:
    """Read the lot rules from a ccxt unified market dict.

    ``precision.amount`` and ``precision.price`` are the step itself in ``TICK_SIZE`` mode
    (ccxt 4 uses it for Binance: 0.001) and a number of decimals in ``DECIMAL_PLACES`` mode (3
    means a step of 0.001); pass the exchange's ``precisionMode``. ``limits.amount.min`` and
    ``limits.cost.min`` give the minimums (missing or None: 0). Only ``active`` False marks
    the market as not trading: ccxt leaves it None where the exchange does not say.
    """
    precision = market.get("precision") or {}
    limits = market.get("limits") or {}
    min_amount = (limits.get("amount") or {}).get("min")
    min_notional = (limits.get("cost") or {}).get("min")
    return LotRules(
        amount_step=_step(market, precision.get("amount"), "amount", precision_mode),
        min_amount=float(min_amount or 0.0),
        min_notional=float(min_notional or 0.0),
        price_step=_step(market, precision.get("price"), "price", precision_mode),
        trading=market.get("active") is not False,
    )


def _step(market: dict[str, Any], precision: Any, what: str, precision_mode: int) -> float | None:
    """The step a ccxt ``precision`` value means in ``precision_mode`` (None: no step)."""
    if precision is None:
        return None
    if precision_mode == TICK_SIZE:
        step = float(precision)
    elif precision_mode == DECIMAL_PLACES:
        step = 10.0 ** -int(precision)
    else:
        raise ValueError(
            f"lot_rules_from_ccxt: precision_mode must be TICK_SIZE ({TICK_SIZE}) or "
            f"DECIMAL_PLACES ({DECIMAL_PLACES}), received {precision_mode} for market "
            f"{market.get('symbol')!r}"
        )
    if not step > 0:
        raise ValueError(
            f"lot_rules_from_ccxt: market {market.get('symbol')!r} has {what} step {step}, "
            "expected > 0"
        )
    return step


def round_quantity(quantity: float, price: float, rules: LotRules) -> float:
    """Return ``quantity`` rounded towards zero to the step, sign kept; 0.0 when the rounded
    quantity is below ``min_amount`` or its notional (``|quantity| * price``) below
    ``min_notional``.

    Rounding is down, never up, so an order is never larger than it was sized; a quantity
    within 1e-9 steps of the next step up counts as reaching it (float error).
    """
    if not math.isfinite(quantity):
        raise ValueError(f"round_quantity: quantity must be finite, received {quantity}")
    if not (math.isfinite(price) and price > 0):
        raise ValueError(f"round_quantity: price must be finite and > 0, received {price}")
    size = abs(quantity)
    if rules.amount_step is not None:
        step = rules.amount_step
        steps = math.floor(size / step + _STEP_TOLERANCE)
        # n * step in binary can be 0.30000000000000004: round to the step's own decimals.
        decimals = max(0, -Decimal(repr(step)).normalize().as_tuple().exponent)
        size = round(steps * step, decimals)
    if size == 0.0 or size < rules.min_amount or size * price < rules.min_notional:
        return 0.0
    return math.copysign(size, quantity)
