"""What the execution service needs of a broker, and nothing more.

Two adapters implement it: ``brokers.simulated.SimulatedBroker`` (paper: matches orders against
the bars it is fed) and ``brokers.ccxt_broker.CcxtBroker`` (an exchange through ccxt's unified
API). Every call returns the events it caused (``OrderUpdate`` and ``Fill``) rather than
publishing them, so the execution service commits them with the message that caused them.

Every method that changes an order is idempotent by client order id: a second ``submit`` of a
known id trades nothing and answers with the order's current state, a ``cancel`` of a terminal
order answers with its terminal state. Each order ends in exactly one terminal status
(``filled``, ``cancelled``, ``rejected``, ``expired``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from engine.events import BarBlock, BarSet, EventPayload, Fill, OrderRequest, OrderUpdate

__all__ = ["DUPLICATE_SUBMIT", "Balances", "Broker", "BrokerError", "OpenOrder"]

# The reason of the update that answers a second submit of a known client order id (every
# adapter words it alike, so logs and tests can tell such an answer from a new state).
DUPLICATE_SUBMIT = "duplicate submit: order already known"


class BrokerError(Exception):
    """A broker could not answer (network down, exchange unavailable after retries).

    Order errors (a reject) are not raised: they come back as a ``rejected`` OrderUpdate with
    the venue's reason. A submit that cannot reach the venue is not raised either: the order
    is kept with its outcome unknown and settled by a later poll (see brokers/ccxt_broker.py).
    Raised by calls that can wait for the venue (a cancel, a balance, reconcile on start):
    the caller must not acknowledge the message that led to the call.
    """


@dataclass(frozen=True)
class OpenOrder:
    """An order still working at the venue: its request and how much of it has filled."""

    request: OrderRequest
    status: str  # "accepted" or "partially_filled"
    filled_quantity: float
    average_price: float | None
    broker_order_id: str | None = None


@dataclass(frozen=True)
class Balances:
    """The account: free quote cash and base positions (symbol -> quantity, no zeros)."""

    cash: float
    positions: dict[str, float] = field(default_factory=dict)
    quote_currency: str = "USDT"


@runtime_checkable
class Broker(Protocol):
    """The broker adapter the execution service drives (see the module docstring)."""

    name: str

    def submit(self, order: OrderRequest) -> list[EventPayload]:
        """Place ``order``; a known client order id is answered with its current state."""
        ...

    def reject(self, order: OrderRequest, reason: str) -> list[EventPayload]:
        """Refuse ``order`` without sending it (trading halted), remembering its id so that a
        later submit of it trades nothing either."""
        ...

    def cancel(self, client_order_id: str, reason: str) -> list[EventPayload]:
        """Cancel a working order; a terminal one is answered with its terminal state, an
        unknown id with a ``rejected`` update that says so."""
        ...

    def cancel_open_orders(self, reason: str) -> list[EventPayload]:
        """Cancel every working order (halt, end of data)."""
        ...

    def open_orders(self) -> list[OpenOrder]:
        """The orders still working, oldest first."""
        ...

    def order_status(self, client_order_id: str) -> OrderUpdate | None:
        """The order's current state as an update (None: the id is unknown)."""
        ...

    def balances(self) -> Balances:
        """Free cash and positions now."""
        ...

    def fills_since(self, since: datetime) -> list[Fill]:
        """The fills executed at or after ``since``, oldest first."""
        ...

    def on_bar(self, bars: BarSet) -> list[EventPayload]:
        """A bar closed: match (simulated) or poll the venue for what changed (exchange)."""
        ...

    def on_block(self, block: BarBlock) -> list[EventPayload]:
        """A block of bars closed (a backtest's bars between two decisions)."""
        ...

    def reconcile(self) -> list[EventPayload]:
        """On start: what happened at the venue while the service was down (fills, cancels),
        as events not yet published. Nothing for a broker whose account is its own state."""
        ...

    def snapshot(self) -> bytes:
        """The account as bytes, committed with each message the execution service handles."""
        ...

    def restore(self, blob: bytes) -> None:
        """Become the account a ``snapshot`` describes."""
        ...
