"""What the ccxt adapter reads from the exchange: markets, orders, trades and the balance.

Each read runs under the adapter's retry policy (``ExchangeCalls``); an exchange that cannot
answer, after the retries or with an error that says nothing about the account, raises
``BrokerError`` naming the call and the symbol. "No such order" is an answer: ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import ccxt

from brokers.ccxt_exchange import ExchangeCalls
from brokers.ccxt_orders import OrderRecord

__all__ = ["ExchangeReads", "find_by_client_id"]

T = TypeVar("T")


def find_by_client_id(exchange: ccxt.Exchange, record: OrderRecord) -> dict[str, Any] | None:
    """One try of looking up ``record``'s order by its venue client id (None: there is none).

    ccxt maps the unified ``clientOrderId`` to Binance's ``origClientOrderId`` on a query.
    """
    try:
        return exchange.fetch_order(None, record.symbol, {"clientOrderId": record.venue_client_id})
    except ccxt.OrderNotFound:
        return None


class ExchangeReads:
    """The adapter's exchange reads, retried and translated (see the module docstring)."""

    def __init__(self, calls: ExchangeCalls, trades_page: int) -> None:
        self.calls = calls
        self.exchange = calls.exchange
        self.trades_page = trades_page

    def read(self, call: str, symbol: str | None, function: Callable[[], T]) -> T:
        """``function()`` under the retry policy; any ccxt error left becomes BrokerError."""
        try:
            return self.calls.run(call, symbol, function)
        except ccxt.BaseError as error:
            raise self.calls.unanswered(call, symbol, error) from error

    def markets(self) -> dict[str, Any]:
        """The exchange's markets, loaded on first use."""
        if not self.exchange.markets:
            self.read("load_markets", None, self.exchange.load_markets)
        return self.exchange.markets

    def balance(self) -> dict[str, Any]:
        return self.read("fetch_balance", None, self.exchange.fetch_balance)

    def lookup(self, record: OrderRecord) -> dict[str, Any] | None:
        """``record``'s order found by its venue client id (None: the exchange has none)."""
        return self.read(
            "fetch_order", record.symbol, partial(find_by_client_id, self.exchange, record)
        )

    def order(self, record: OrderRecord) -> dict[str, Any] | None:
        """``record``'s order as the exchange has it now (None: the exchange forgot it)."""
        if record.exchange_order_id is None:
            return self.lookup(record)

        def fetch() -> dict[str, Any] | None:
            try:
                return self.exchange.fetch_order(record.exchange_order_id, record.symbol)
            except ccxt.OrderNotFound:
                return None

        return self.read("fetch_order", record.symbol, fetch)

    def order_trades(self, record: OrderRecord) -> list[dict[str, Any]]:
        """Every trade of ``record``'s order (Binance's trade list filtered by order id)."""
        fetch = partial(
            self.exchange.fetch_my_trades,
            record.symbol,
            None,
            self.trades_page,
            {"orderId": record.exchange_order_id},
        )
        return self.read("fetch_my_trades", record.symbol, fetch)

    def trades_since(self, symbol: str, since_ms: int) -> list[dict[str, Any]]:
        """The account's trades in ``symbol`` from ``since_ms`` on, oldest first, page by page."""
        trades: dict[str, dict[str, Any]] = {}
        while True:
            fetch = partial(self.exchange.fetch_my_trades, symbol, since_ms, self.trades_page)
            page = self.read("fetch_my_trades", symbol, fetch)
            fresh = [t for t in page if str(t["id"]) not in trades]
            trades.update((str(t["id"]), t) for t in page)
            if len(page) < self.trades_page or not fresh:
                break
            # The next page starts at the last trade's time (trades sharing it come again and
            # are dropped by id); a full page of one millisecond moves on a millisecond.
            last_ms = max(int(t["timestamp"]) for t in page)
            since_ms = last_ms if last_ms > since_ms else since_ms + 1
        return sorted(trades.values(), key=lambda t: (int(t["timestamp"]), str(t["id"])))

    def cancel(self, record: OrderRecord) -> dict[str, Any] | None:
        """Cancel ``record``'s order (None: the exchange has no open order by that id any
        more: it ended first). Cancelling twice is harmless, so it is retried like a read."""

        def cancel() -> dict[str, Any] | None:
            try:
                return self.exchange.cancel_order(
                    record.exchange_order_id,
                    record.symbol,
                    {"clientOrderId": record.venue_client_id},
                )
            except ccxt.OrderNotFound:
                return None

        return self.read("cancel_order", record.symbol, cancel)
