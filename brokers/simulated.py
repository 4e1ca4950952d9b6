"""The paper broker: a spot account that fills market orders against replayed bars.

Fills happen at the open of the first bar that opens at or after the decision (``next_open``,
the default: the decision bar's close is already history when the order arrives) or at the
close of the decision bar itself (``close``, what classic vectorised backtesters assume).
Fees are a fraction of traded notional, paid in the quote currency. Like an exchange's spot
account it never lends: a buy larger than the cash is cut to what the cash pays for, a sell
larger than the position is cut to the position; the rest is cancelled with the reason.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import structlog

from engine.events import BarBlock, BarSet, EventPayload, Fill, OrderRequest, OrderUpdate

FillPrice = Literal["next_open", "close"]
log = structlog.get_logger("brokers.simulated")
_QUANTITY_EPSILON = 1e-12
_BARS_KEPT = 8


@dataclass
class _Bar:
    close_time: datetime
    bar_open: datetime
    index: dict[str, int]
    open: tuple[float, ...]
    close: tuple[float, ...]


@dataclass
class SimulatedBroker:
    """Account state and matching rules of the paper broker (no I/O: returns events)."""

    initial_cash: float
    fee_rate: float = 0.001
    fill_price: FillPrice = "next_open"
    fractional: bool = True
    fee_currency: str = "USDT"
    cash: float = field(init=False)
    positions: dict[str, float] = field(default_factory=dict)
    _seen_orders: set[str] = field(default_factory=set)
    _queued: list[OrderRequest] = field(default_factory=list)
    _bars: OrderedDict[datetime, _Bar] = field(default_factory=OrderedDict)
    _fill_sequence: int = 0
    _last_symbols: tuple[str, ...] | None = None
    _last_index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.fill_price not in ("next_open", "close"):
            raise ValueError(
                f"fill_price must be 'next_open' or 'close', received {self.fill_price!r}"
            )
        self.cash = float(self.initial_cash)

    # -- inputs ----------------------------------------------------------------------------
    def submit(self, order: OrderRequest) -> list[EventPayload]:
        """Accept an order (once per client order id) and fill it if its bar is known."""
        if order.client_order_id in self._seen_orders:
            log.info("broker.duplicate_order_ignored", client_order_id=order.client_order_id)
            return []
        self._seen_orders.add(order.client_order_id)
        if order.order_type != "market":
            return [
                OrderUpdate(
                    client_order_id=order.client_order_id,
                    status="rejected",
                    reason="simulated broker fills market orders only",
                )
            ]
        out: list[EventPayload] = [
            OrderUpdate(client_order_id=order.client_order_id, status="accepted")
        ]
        bar = self._bar_for(order)
        if bar is None:
            self._queued.append(order)
        else:
            out += self._execute(order, bar)
        return out

    def on_bar(self, bars: BarSet, close_time: datetime) -> list[EventPayload]:
        """Record a bar and fill every queued order it is the fill bar of, in arrival order."""
        if bars.symbols is not self._last_symbols and bars.symbols != self._last_symbols:
            self._last_index = {symbol: i for i, symbol in enumerate(bars.symbols)}
            self._last_symbols = bars.symbols
        self._bars[close_time] = _Bar(
            close_time=close_time,
            bar_open=bars.bar_open,
            index=self._last_index,
            open=bars.open,
            close=bars.close,
        )
        while len(self._bars) > _BARS_KEPT:
            self._bars.popitem(last=False)
        out: list[EventPayload] = []
        still_queued = []
        for order in self._queued:
            bar = self._bar_for(order)
            if bar is None:
                still_queued.append(order)
            else:
                out += self._execute(order, bar)
        self._queued = still_queued
        return out

    def on_block(self, block: BarBlock) -> list[EventPayload]:
        """Record a block of bars: bar by bar while orders wait for their fill bar, else only
        its last bar, the only one a later order can be decided on (blocks end at ticks)."""
        out: list[EventPayload] = []
        if self._queued:
            for bars in block.rows():
                out += self.on_bar(bars, bars.close_time)
            return out
        last = block.last_row()
        if last is not None:
            out = self.on_bar(last, last.close_time)
        return out

    def cancel_open_orders(self, reason: str) -> list[EventPayload]:
        """Cancel every order still waiting for its fill bar (halt, end of data)."""
        out: list[EventPayload] = [
            OrderUpdate(client_order_id=o.client_order_id, status="cancelled", reason=reason)
            for o in self._queued
        ]
        self._queued = []
        return out

    @property
    def open_order_count(self) -> int:
        return len(self._queued)

    # -- matching --------------------------------------------------------------------------
    def _bar_for(self, order: OrderRequest) -> _Bar | None:
        if self.fill_price == "close":
            return self._bars.get(order.asof)
        return next((bar for bar in self._bars.values() if bar.bar_open >= order.asof), None)

    def _execute(self, order: OrderRequest, bar: _Bar) -> list[EventPayload]:
        column = bar.index.get(order.symbol)
        prices = bar.close if self.fill_price == "close" else bar.open
        if column is None:
            return [
                OrderUpdate(
                    client_order_id=order.client_order_id,
                    status="rejected",
                    reason=f"no bar for {order.symbol} at {bar.close_time.isoformat()}",
                )
            ]
        price = prices[column]
        requested = order.quantity
        if order.side == "buy":
            available = max(self.cash / (price * (1.0 + self.fee_rate)), 0.0)
            limit_reason = "cash covers only part" if available > 0 else "no cash"
        else:
            available = self.positions.get(order.symbol, 0.0)
            limit_reason = "position smaller than order" if available > 0 else "no position to sell"
        quantity = min(requested, available)
        if quantity < requested * (1 - 1e-9):
            reason = limit_reason
        elif not self.fractional and quantity != math.floor(quantity + _QUANTITY_EPSILON):
            reason = "whole units only"
        else:
            reason = ""
        if not self.fractional:
            quantity = math.floor(quantity + _QUANTITY_EPSILON)
        if quantity <= _QUANTITY_EPSILON:
            return [
                OrderUpdate(
                    client_order_id=order.client_order_id,
                    status="rejected",
                    reason=reason or "quantity rounds to zero",
                )
            ]
        notional = quantity * price
        fee = notional * self.fee_rate
        if order.side == "buy":
            self.cash -= notional + fee
            self.positions[order.symbol] = self.positions.get(order.symbol, 0.0) + quantity
        else:
            self.cash += notional - fee
            remaining = self.positions.get(order.symbol, 0.0) - quantity
            if remaining <= _QUANTITY_EPSILON:
                self.positions.pop(order.symbol, None)
            else:
                self.positions[order.symbol] = remaining
        self._fill_sequence += 1
        executed_at = bar.close_time if self.fill_price == "close" else bar.bar_open
        fill = Fill(
            fill_id=f"{order.client_order_id}-f{self._fill_sequence}",
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            quantity=quantity,
            price=price,
            fee=fee,
            fee_currency=self.fee_currency,
            executed_at=executed_at,
        )
        complete = quantity >= requested * (1 - 1e-9)
        update = OrderUpdate(
            client_order_id=order.client_order_id,
            status="filled" if complete else "cancelled",
            filled_quantity=quantity,
            average_price=price,
            reason=None if complete else f"rest cancelled: {reason}",
        )
        return [fill, update]
