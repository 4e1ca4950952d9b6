"""How much of an order one bar fills, and at what price: the paper broker's market model.

Kept apart from the account so that the rules can be read (and checked) in one place:

- The *reference price* of a bar is its open (``next_open``), its close (``close``) or the
  mean of open, high, low and close (``next_vwap``, a VWAP proxy for orders worked through the
  bar).
- A market order, or a limit order marketable at the reference price, takes liquidity: it pays
  the fixed slippage plus a square-root impact, ``impact_coefficient * sqrt(quantity / bar
  volume)`` (the "square-root law" of market impact; no volume, no impact), and the taker fee.
  A limit order caps that price at its limit.
- A limit order not marketable at the reference price rests; it fills at its limit when the
  bar trades through it (low <= limit for a buy, high >= limit for a sell), as a maker: no
  slippage, the maker fee. In ``close`` mode only the close is known to have traded, so a
  resting order fills only if the close crosses it.
- At most ``max_participation`` of the bar's volume fills (all orders of the symbol together);
  the rest stays open for the next bar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

FillPrice = Literal["next_open", "close", "next_vwap"]
FILL_PRICES: tuple[str, ...] = ("next_open", "close", "next_vwap")

__all__ = ["FILL_PRICES", "BarQuote", "FillModel", "FillPrice", "Quote"]


@dataclass(frozen=True, slots=True)
class BarQuote:
    """One symbol's bar, as the fill model needs it (volume None: not known)."""

    open: float
    high: float
    low: float
    close: float
    volume: float | None


@dataclass(frozen=True, slots=True)
class Quote:
    """What one bar offers an order: a price and whether it takes liquidity (taker fee)."""

    price: float
    taker: bool


@dataclass(frozen=True)
class FillModel:
    """Prices and volume caps of the paper broker (see the module docstring)."""

    fill_price: FillPrice = "next_open"
    slippage_bps: float = 0.0
    impact_coefficient: float = 0.0
    max_participation: float = 0.0  # 0: no cap
    taker_fee: float = 0.001
    maker_fee: float = 0.001

    def __post_init__(self) -> None:
        if self.fill_price not in FILL_PRICES:
            raise ValueError(
                f"fill_price must be one of {', '.join(repr(p) for p in FILL_PRICES)}, "
                f"received {self.fill_price!r}"
            )
        for name in ("slippage_bps", "impact_coefficient", "max_participation"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, received {value}")
        if self.max_participation > 1:
            raise ValueError(
                f"max_participation is a fraction of bar volume in [0, 1], received "
                f"{self.max_participation}"
            )

    def reference(self, bar: BarQuote) -> float:
        """The price an order arriving before this bar trades at, before costs."""
        if self.fill_price == "next_open":
            return bar.open
        if self.fill_price == "close":
            return bar.close
        return (bar.open + bar.high + bar.low + bar.close) / 4.0

    def quote(
        self, side: str, limit_price: float | None, bar: BarQuote, resting: bool
    ) -> Quote | None:
        """The price before impact at which an order can trade on ``bar`` (None: it cannot).

        ``resting``: the order was working before this bar (a limit order that rested, or the
        rest of a partly filled one); a resting limit order gapped through at the open fills
        at the open, as a maker.
        """
        reference = self.reference(bar)
        if limit_price is None:
            return Quote(reference, taker=True)
        buy = side == "buy"
        marketable = reference <= limit_price if buy else reference >= limit_price
        if marketable:
            return Quote(reference, taker=not resting)
        if self.fill_price == "close":
            return None
        crossed = bar.low <= limit_price if buy else bar.high >= limit_price
        return Quote(limit_price, taker=False) if crossed else None

    def price(
        self, side: str, quote: Quote, quantity: float, volume: float | None, limit: float | None
    ) -> float:
        """The fill price of ``quantity`` at ``quote``: a taker pays slippage and impact, a
        limit order never trades through its limit."""
        if not quote.taker:
            return quote.price
        cost = self.slippage_bps * 1e-4
        if self.impact_coefficient > 0 and volume:
            cost += self.impact_coefficient * math.sqrt(quantity / volume)
        # Without a volume cap an order can be many times a bar's volume; the model is not
        # meant for that, and a sell must keep a positive price: costs stop at half the price.
        cost = min(cost, 0.5)
        price = quote.price * (1.0 + cost) if side == "buy" else quote.price * (1.0 - cost)
        if limit is not None:
            price = min(price, limit) if side == "buy" else max(price, limit)
        return price

    def fee_rate(self, quote: Quote) -> float:
        return self.taker_fee if quote.taker else self.maker_fee

    def volume_cap(self, volume: float | None) -> float:
        """The most one bar can fill of a symbol (inf: no cap, or volume unknown)."""
        if self.max_participation <= 0 or volume is None:
            return math.inf
        return self.max_participation * volume
