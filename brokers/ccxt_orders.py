"""What the ccxt adapter knows of each order, and how ccxt's unified order and trade dicts
become our events.

The execution service commits ``CcxtState`` (every ``OrderRecord`` as a compact
``RecordState`` row) with each message it handles, so a restarted adapter knows which orders
it placed, which exchange trades it has already reported as fills, and whether an order's
terminal update went out.

An order whose submit could not reach the exchange is kept with ``unknown_since_ms`` set (its
outcome unknown: it may or may not have been placed) until a lookup by its venue client id
settles it; ``absent_reason`` is the reason of the ``rejected`` update it ends with if the
exchange turns out to have none, and ``cancel_pending`` the reason of a cancel asked for while
it was unknown (carried out once it is found working). Version 2 of the state added these
three fields at the end of each row; a version 1 state is read with them unset (it had no such
orders).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from engine.events import Fill, OrderRequest, OrderUpdate
from engine.events.base import UtcDatetime
from engine.events.trading import OrderStatus

__all__ = [
    "ORDERS_KEPT",
    "READABLE_VERSIONS",
    "STATE_VERSION",
    "CcxtState",
    "OrderRecord",
    "RecordState",
    "StateHeader",
    "fill_from_trade",
    "terminal_status",
    "venue_client_id",
]

STATE_VERSION = 2
# The state versions ``restore`` reads: 1 lacks the unknown-outcome fields (read as unset).
READABLE_VERSIONS = (1, 2)
# Terminal orders remembered to answer a duplicate submit (open ones are always kept): the same
# window as the paper broker's (brokers/simulated.py), for the same reason.
ORDERS_KEPT = 1024
VENUE_ID_PREFIX = "df-"
# Quantities within this fraction of the order's size count as equal (float sums of trades).
QUANTITY_TOLERANCE = 1e-9

# ccxt's unified order status -> ours, for the statuses that end an order ("open" and
# "canceling" are still working).
_TERMINAL: dict[str, OrderStatus] = {
    "closed": "filled",
    "canceled": "cancelled",
    "cancelled": "cancelled",
    "expired": "expired",
    "rejected": "rejected",
}
_TERMINAL_REASON: dict[str, str] = {
    "cancelled": "cancelled at the exchange",
    "expired": "expired at the exchange",
    "rejected": "rejected by the exchange",
}


def venue_client_id(client_order_id: str) -> str:
    """Return the client order id sent to the exchange for ours.

    Ours run to 128 characters (``rb-weekly-20200601T000000Z-SYN007/USDT``); Binance takes
    ``^[.A-Z:/a-z0-9_-]{1,36}$``. A digest of ours fits and is the same on every run, so a
    restarted adapter with no record of an order can still find it at the exchange.
    """
    digest = hashlib.sha256(client_order_id.encode()).hexdigest()[:32]
    return f"{VENUE_ID_PREFIX}{digest}"


def terminal_status(order: dict[str, Any]) -> OrderStatus | None:
    """Our terminal status for a ccxt order dict (None: it is still working)."""
    return _TERMINAL.get(str(order.get("status")))


def _quote_of(symbol: str) -> str:
    return symbol.split("/", 1)[-1].split(":", 1)[0]


def _as_datetime(milliseconds: int) -> datetime:
    return datetime.fromtimestamp(milliseconds / 1000, tz=UTC)


@dataclass(slots=True)
class OrderRecord:
    """One order the adapter placed (or refused), and what it has reported of it so far.

    ``filled_quantity`` and ``average_price`` add up the fills reported, never the exchange's
    own totals, so updates and fills always agree; ``trade_ids`` are the exchange trades
    already reported, so a trade is booked once however often it is seen.

    ``unknown_since_ms`` (the adapter's clock, milliseconds) is set while the order's outcome
    is unknown: a submit that could not reach the exchange, so it may or may not have been
    placed. ``absent_reason`` is then the ``rejected`` reason to end it with if the exchange
    has no such order; ``cancel_pending`` a cancel's reason to carry out once it is found.
    """

    request: OrderRequest
    venue_client_id: str
    exchange_order_id: str | None = None
    placed_ms: int | None = None  # the exchange's creation time (reconcile's trade window)
    status: OrderStatus = "accepted"
    filled_quantity: float = 0.0
    average_price: float | None = None
    reason: str | None = None
    trade_ids: list[str] = field(default_factory=list)
    terminal_sent: bool = False
    unknown_since_ms: int | None = None
    absent_reason: str | None = None
    cancel_pending: str | None = None

    @property
    def outcome_unknown(self) -> bool:
        """Whether the exchange may or may not hold this order (see the class docstring)."""
        return self.unknown_since_ms is not None and not self.terminal_sent

    @property
    def client_order_id(self) -> str:
        return self.request.client_order_id

    @property
    def symbol(self) -> str:
        return self.request.symbol

    def as_update(self, reason: str | None = None) -> OrderUpdate:
        """The order's current state as an update (``reason`` overrides the stored one)."""
        return OrderUpdate(
            client_order_id=self.request.client_order_id,
            status=self.status,
            broker_order_id=self.exchange_order_id,
            filled_quantity=self.filled_quantity,
            average_price=self.average_price,
            reason=self.reason if reason is None else reason,
        )

    def finish(self, status: OrderStatus, reason: str | None = None) -> OrderUpdate:
        """Move to terminal ``status`` and return its update; the caller checks
        ``terminal_sent`` first, so an order has one terminal update."""
        assert not self.terminal_sent, f"order {self.client_order_id} already terminal"
        self.status = status
        self.reason = reason if reason is not None else _TERMINAL_REASON.get(status)
        self.terminal_sent = True
        return self.as_update()

    def progress(self) -> OrderUpdate:
        """Mark the order partially filled and return the update that says so."""
        self.status = "partially_filled"
        return self.as_update()

    def fully_reported(self, exchange_filled: float) -> bool:
        """Whether the fills reported add up to what the exchange says has filled."""
        return self.filled_quantity >= exchange_filled - QUANTITY_TOLERANCE * max(
            1.0, self.request.quantity
        )

    def book(self, trade: dict[str, Any], fallback_ms: int) -> Fill | None:
        """Report one exchange trade of this order as a Fill (None: reported before)."""
        trade_id = str(trade["id"])
        if trade_id in self.trade_ids:
            return None
        fill = fill_from_trade(self, trade, fallback_ms)
        self.trade_ids.append(trade_id)
        filled = self.filled_quantity + fill.quantity
        self.average_price = (
            fill.price
            if self.average_price is None
            else (self.average_price * self.filled_quantity + fill.quantity * fill.price) / filled
        )
        self.filled_quantity = filled
        return fill


def fill_from_trade(record: OrderRecord, trade: dict[str, Any], fallback_ms: int) -> Fill:
    """The Fill for one ccxt trade of ``record``'s order.

    The id joins our client order id and the exchange's trade id, so the same trade has the
    same fill id on every run; an id too long for an Identifier uses the (shorter) venue client
    id instead. The fee is the exchange's, in the currency it charged (BNB on Binance when the
    account pays fees in BNB). A trade without a time (a FULL order response) takes the order's.
    """
    trade_id = str(trade["id"])
    fill_id = f"{record.client_order_id}-t{trade_id}"
    if len(fill_id) > 128:
        fill_id = f"{record.venue_client_id}-t{trade_id}"
    fee = trade.get("fee") or {}
    timestamp = trade.get("timestamp")
    return Fill(
        fill_id=fill_id,
        client_order_id=record.client_order_id,
        symbol=record.symbol,
        side=record.request.side,
        quantity=float(trade["amount"]),
        price=float(trade["price"]),
        fee=float(fee.get("cost") or 0.0),
        fee_currency=str(fee.get("currency") or _quote_of(record.symbol)),
        executed_at=_as_datetime(int(timestamp if timestamp is not None else fallback_ms)),
    )


class RecordState(msgspec.Struct, frozen=True, array_like=True):
    """One ``OrderRecord`` in ``CcxtState``: its request's fields, then what was reported.
    A row rather than a map keeps a thousand remembered orders small in every commit."""

    client_order_id: str
    rebalance_id: str
    asof: UtcDatetime
    symbol: str
    side: str
    quantity: float
    order_type: str
    limit_price: float | None
    reference_price: float | None
    reduce_only: bool
    venue_client_id: str
    exchange_order_id: str | None
    placed_ms: int | None
    status: str
    filled_quantity: float
    average_price: float | None
    reason: str | None
    trade_ids: list[str]
    terminal_sent: bool
    # Version 2 (a version 1 row ends above: these read as unset).
    unknown_since_ms: int | None = None
    absent_reason: str | None = None
    cancel_pending: str | None = None

    @classmethod
    def of(cls, record: OrderRecord) -> RecordState:
        request = record.request
        return cls(
            request.client_order_id,
            request.rebalance_id,
            request.asof,
            request.symbol,
            request.side,
            request.quantity,
            request.order_type,
            request.limit_price,
            request.reference_price,
            request.reduce_only,
            record.venue_client_id,
            record.exchange_order_id,
            record.placed_ms,
            record.status,
            record.filled_quantity,
            record.average_price,
            record.reason,
            list(record.trade_ids),
            record.terminal_sent,
            record.unknown_since_ms,
            record.absent_reason,
            record.cancel_pending,
        )

    def record(self) -> OrderRecord:
        request = OrderRequest(
            client_order_id=self.client_order_id,
            rebalance_id=self.rebalance_id,
            asof=self.asof,
            symbol=self.symbol,
            side=self.side,  # type: ignore[arg-type]
            quantity=self.quantity,
            order_type=self.order_type,  # type: ignore[arg-type]
            limit_price=self.limit_price,
            reference_price=self.reference_price,
            reduce_only=self.reduce_only,
        )
        return OrderRecord(
            request=request,
            venue_client_id=self.venue_client_id,
            exchange_order_id=self.exchange_order_id,
            placed_ms=self.placed_ms,
            status=self.status,  # type: ignore[arg-type]
            filled_quantity=self.filled_quantity,
            average_price=self.average_price,
            reason=self.reason,
            trade_ids=list(self.trade_ids),
            terminal_sent=self.terminal_sent,
            unknown_since_ms=self.unknown_since_ms,
            absent_reason=self.absent_reason,
            cancel_pending=self.cancel_pending,
        )


class StateHeader(msgspec.Struct, frozen=True):
    """The fields of ``CcxtState`` that every version has: read first, so a state of a
    version this build cannot read is refused by its version, not by a decoding error."""

    version: int
    exchange: str = ""


class CcxtState(msgspec.Struct, frozen=True, kw_only=True):
    """The ccxt adapter's committed state: its orders, oldest first."""

    version: int = STATE_VERSION
    exchange: str
    orders: list[RecordState]
    last_fill_ms: int | None = None  # the latest trade time reported (reconcile's window)
