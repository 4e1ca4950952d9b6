"""What the broker contract suite needs of a venue: a broker adapter on an account it can make
trade. One subclass per adapter (venue_simulated.py, venue_ccxt.py); the tests in
test_broker_contract.py run against every one of them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime

from brokers.protocol import Broker
from engine.events import EventPayload, OrderRequest


class Venue(ABC):
    """An account at a venue, with one adapter on it and the means to move its market.

    ``symbol`` trades at about ``price`` (quote units); the account starts with ``cash`` of
    the quote currency and no position. ``now`` is the venue's time: fills of an ``advance``
    are executed at or after it.
    """

    symbol: str
    price: float
    cash: float
    broker: Broker

    @abstractmethod
    def now(self) -> datetime:
        """The venue's current time (the time fills of the next ``advance`` carry, or later)."""

    def order(
        self,
        client_order_id: str,
        side: str,
        quantity: float,
        *,
        order_type: str = "market",
        limit_price: float | None = None,
        symbol: str | None = None,
    ) -> OrderRequest:
        """An OrderRequest decided now, at ``price``."""
        return OrderRequest(
            client_order_id=client_order_id,
            rebalance_id="rb-contract",
            asof=self.now(),
            symbol=symbol or self.symbol,
            side=side,  # type: ignore[arg-type]
            quantity=quantity,
            order_type=order_type,  # type: ignore[arg-type]
            limit_price=limit_price,
            reference_price=self.price,
        )

    @abstractmethod
    def advance(self) -> list[EventPayload]:
        """Let the market move on one step at ``price`` and return what the adapter reports:
        market orders submitted before it are filled by then; resting limit orders stay
        unless the price crosses them."""

    @abstractmethod
    def cross(self, price: float) -> list[EventPayload]:
        """Let the market trade at ``price`` (through resting limit orders on the way) and
        return what the adapter reports."""

    @abstractmethod
    def restart(self) -> Broker:
        """A new adapter on the same account, as after a restart of the execution service:
        restored from ``broker.snapshot()`` and reconciled; becomes ``broker``."""

    @abstractmethod
    def minimum_notional(self) -> float:
        """The smallest order value the venue accepts for ``symbol`` (its market rules)."""
