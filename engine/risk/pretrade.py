"""Pre-trade checks: the last look at an order, or a decision, before it leaves.

They block rather than resize: an order that fails a collar or a notional cap is a sign that
something upstream is wrong (a stale or bad price, a sizing error), and trading a smaller
amount of it would hide that.
"""

from __future__ import annotations

from datetime import datetime

from engine.config import RiskConfig


def order_block_reason(
    quantity: float,
    reference_price: float,
    last_price: float | None,
    config: RiskConfig,
    reduce_only: bool = False,
) -> str | None:
    """Why an order of ``quantity`` sized at ``reference_price`` must not leave (None: it may).

    ``last_price`` is the latest price seen for its symbol (None: unknown, no collar check).
    A ``reduce_only`` order (a risk cut, a flatten) is not held to the notional cap: closing
    a large position must not be what a fat-finger check stops.
    """
    if config.price_collar > 0 and last_price is not None and last_price > 0:
        distance = abs(reference_price / last_price - 1.0)
        if distance > config.price_collar:
            return (
                f"price collar: reference price {reference_price:g} is {distance:.2%} from the "
                f"last price {last_price:g} (collar {config.price_collar:.2%})"
            )
    notional = abs(quantity) * reference_price
    if not reduce_only and config.max_order_notional > 0 and notional > config.max_order_notional:
        return f"max order notional: {notional:,.2f} above the cap {config.max_order_notional:,.2f}"
    return None


def stale_data_reason(
    bar_close: datetime, now: datetime, bar_seconds: float, config: RiskConfig
) -> str | None:
    """Why a decision on the bar that closed at ``bar_close`` must not trade at ``now`` (None:
    the data is fresh enough). Off when ``max_data_age_bars`` is 0 or the bar length unknown."""
    if config.max_data_age_bars <= 0 or bar_seconds <= 0:
        return None
    age = (now - bar_close).total_seconds()
    limit = config.max_data_age_bars * bar_seconds
    if age > limit:
        return (
            f"stale market data: the decision bar closed {age:,.0f} s before now, more than "
            f"max_data_age_bars {config.max_data_age_bars:g} x {bar_seconds:,.0f} s"
        )
    return None
