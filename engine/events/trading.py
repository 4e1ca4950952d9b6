"""Trading payloads: orders, their lifecycle, fills and the portfolio they add up to."""

from __future__ import annotations

from typing import ClassVar, Literal

from engine.events.base import (
    EventPayload,
    Identifier,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    Symbol,
    UtcDatetime,
)

Side = Literal["buy", "sell"]
OrderStatus = Literal["accepted", "rejected", "partially_filled", "filled", "cancelled", "expired"]
TERMINAL_ORDER_STATUSES: frozenset[str] = frozenset({"rejected", "filled", "cancelled", "expired"})


class OrderRequest(EventPayload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An order the rebalancer wants placed.

    ``client_order_id`` is derived from the rebalance id and symbol, so a re-delivered request
    is recognised by the broker adapter and never trades twice. ``asof`` is the close time of
    the bar the decision was made on; ``reference_price`` is that bar's close.
    """

    TYPE: ClassVar[str] = "OrderRequest"
    TOPIC: ClassVar[str] = "orders"

    client_order_id: Identifier
    rebalance_id: Identifier
    asof: UtcDatetime
    symbol: Symbol
    side: Side
    quantity: PositiveFloat
    order_type: Literal["market", "limit"] = "market"
    limit_price: PositiveFloat | None = None
    reference_price: PositiveFloat | None = None
    # Only reduces a position towards zero (a risk cut, a flatten): passes a halted execution.
    reduce_only: bool = False

    def __post_init__(self) -> None:
        if self.order_type == "limit" and self.limit_price is None:
            raise ValueError("OrderRequest.limit_price is required for a limit order")
        if self.order_type == "market" and self.limit_price is not None:
            # The brokers would have to guess which of the two was meant.
            raise ValueError(
                "OrderRequest.limit_price is for a limit order: a market order carries none"
            )


class OrderUpdate(EventPayload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A change in an order's state; every order ends with exactly one terminal update."""

    TYPE: ClassVar[str] = "OrderUpdate"
    TOPIC: ClassVar[str] = "order_updates"

    client_order_id: Identifier
    status: OrderStatus
    broker_order_id: str | None = None
    filled_quantity: NonNegativeFloat = 0.0
    average_price: PositiveFloat | None = None
    reason: str | None = None

    @property
    def is_terminal(self) -> bool:
        """Return True when no further update will follow for this order."""
        return self.status in TERMINAL_ORDER_STATUSES


class Fill(EventPayload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One execution against an order; the fee is in ``fee_currency``: the quote currency
    (the paper broker), or what an exchange charged in (the base asset, BNB on Binance)."""

    TYPE: ClassVar[str] = "Fill"
    TOPIC: ClassVar[str] = "fills"

    fill_id: Identifier
    client_order_id: Identifier
    symbol: Symbol
    side: Side
    quantity: PositiveFloat
    price: PositiveFloat
    fee: NonNegativeFloat
    fee_currency: str
    executed_at: UtcDatetime


class PortfolioSnapshot(EventPayload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The account marked to market: ``equity == cash + sum(positions * prices)``.

    ``fills_applied`` counts the fills in the books so far, so an auditor can rebuild exactly
    this state from the first ``fills_applied`` fills of the ledger.
    """

    TYPE: ClassVar[str] = "PortfolioSnapshot"
    TOPIC: ClassVar[str] = "portfolio"

    asof: UtcDatetime
    equity: float
    cash: float
    positions: dict[str, float]
    prices: dict[str, PositiveFloat]
    gross_exposure: NonNegativeFloat
    high_water_mark: float
    drawdown: NonNegativeFloat
    fills_applied: NonNegativeInt = 0
    # VaR at the [risk] confidence and horizon, as positive loss fractions of equity: of the
    # account's own trailing returns, and of the last target by the risk model (None: too
    # little history yet).
    realised_var: NonNegativeFloat | None = None
    expected_var: NonNegativeFloat | None = None
    halted: bool = False
    drawdown_stopped: bool = False


class PortfolioMarks(EventPayload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The account marked at several consecutive bars during which it did not trade: the
    equity path between two snapshots, in one event instead of one snapshot per bar.

    ``cash``, ``positions`` and ``fills_applied`` hold for every bar; per bar ``i``,
    ``equity[i] == cash + sum(positions[s] * prices[s][i])``. ``rows()`` gives the
    PortfolioSnapshots these marks stand for.
    """

    TYPE: ClassVar[str] = "PortfolioMarks"
    TOPIC: ClassVar[str] = "portfolio"

    asof: tuple[UtcDatetime, ...]
    equity: tuple[float, ...]
    cash: float
    positions: dict[str, float]
    prices: dict[str, tuple[PositiveFloat, ...]]
    gross_exposure: tuple[NonNegativeFloat, ...]
    high_water_mark: tuple[float, ...]
    drawdown: tuple[NonNegativeFloat, ...]
    fills_applied: NonNegativeInt = 0

    def __post_init__(self) -> None:
        n = len(self.asof)
        series = {
            "equity": self.equity,
            "gross_exposure": self.gross_exposure,
            "high_water_mark": self.high_water_mark,
            "drawdown": self.drawdown,
            **{f"prices[{s!r}]": p for s, p in self.prices.items()},
        }
        for name, values in series.items():
            if len(values) != n:
                raise ValueError(f"PortfolioMarks.{name} has {len(values)} values for {n} bars")
        if set(self.prices) != set(self.positions):
            raise ValueError("PortfolioMarks.prices must hold exactly the symbols of positions")

    def rows(self) -> list[PortfolioSnapshot]:
        """Return the snapshots these marks stand for, one per bar (the account only: the
        risk figures, VaR and flags, come with the snapshot that follows the marks)."""
        return [
            PortfolioSnapshot(
                asof=asof,
                equity=self.equity[i],
                cash=self.cash,
                positions=dict(self.positions),
                prices={s: p[i] for s, p in self.prices.items()},
                gross_exposure=self.gross_exposure[i],
                high_water_mark=self.high_water_mark[i],
                drawdown=self.drawdown[i],
                fills_applied=self.fills_applied,
            )
            for i, asof in enumerate(self.asof)
        ]
