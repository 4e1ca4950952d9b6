"""The paper broker: a spot account that fills market orders against replayed bars.

Fills happen at the open of the first bar that opens at or after the decision (``next_open``,
the default: the decision bar's close is already history when the order arrives) or at the
close of the decision bar itself (``close``, what classic vectorised backtesters assume).
Fees are a fraction of traded notional, paid in the quote currency. Like an exchange's spot
account it never lends: a buy larger than the cash is cut to what the cash pays for, a sell
larger than the position is cut to the position; the rest is cancelled with the reason.

Client order ids are idempotency keys, as on an exchange: an order trades at most once per
``client_order_id``. A duplicate submit is answered with the existing order's state (one
OrderUpdate with its current status, filled quantity and average price, the reason starting
``duplicate submit: order already known``); its fills are not sent again, they went out the
first time. Binance answers a duplicate ``newClientOrderId`` with an error naming it instead;
reporting the state is what a caller re-running a handler needs to close its books.

The account is part of the execution service's committed state (``state``/``restore``): cash,
positions, every known order (its request and current state; the oldest terminal ones beyond
``orders_kept`` are forgotten, open ones never), the orders queued for their fill bar, and the
last bars it holds for them. A duplicate submit comes from a rebalance run again after its
service died between publishing its orders and committing: right after the first copies, so
the window only has to span one rebalance's orders.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import msgspec
import structlog

from engine.events import (
    TERMINAL_ORDER_STATUSES,
    BarBlock,
    BarSet,
    EventPayload,
    Fill,
    OrderRequest,
    OrderUpdate,
)
from engine.events.base import UtcDatetime
from engine.events.trading import OrderStatus

FillPrice = Literal["next_open", "close"]
log = structlog.get_logger("brokers.simulated")
_QUANTITY_EPSILON = 1e-12
_BARS_KEPT = 8
# Terminal orders remembered to answer a duplicate submit (open ones are always kept). They go
# into the execution service's state, committed with each message it handles (about 145 bytes
# each), and duplicates no longer arise inside a run (outputs leave with the commit), so the
# window covers a few rebalances of a large universe, not the account's history.
ORDERS_KEPT = 1024
DUPLICATE_SUBMIT = "duplicate submit: order already known"


class OrderState(msgspec.Struct, frozen=True, array_like=True):
    """One known order in ``BrokerState``: its request's fields, then its current state."""

    client_order_id: str
    rebalance_id: str
    asof: UtcDatetime
    symbol: str
    side: str
    quantity: float
    order_type: str
    limit_price: float | None
    reference_price: float | None
    status: str
    filled_quantity: float
    average_price: float | None
    reason: str | None
    fills: int


class BarState(msgspec.Struct, frozen=True, array_like=True):
    """One bar the broker holds for the orders waiting for their fill bar."""

    close_time: UtcDatetime
    bar_open: UtcDatetime
    universe: int  # index into BrokerState.universes
    open: tuple[float, ...]
    close: tuple[float, ...]


class BrokerState(msgspec.Struct, frozen=True, kw_only=True):
    """The whole account of a ``SimulatedBroker`` (its settings are the config's, not state)."""

    cash: float
    positions: dict[str, float]
    orders: list[OrderState]  # oldest first
    queued: list[str]  # client order ids waiting for their fill bar, in arrival order
    universes: list[tuple[str, ...]]
    bars: list[BarState]  # oldest first
    last_universe: int | None


@dataclass
class _Bar:
    close_time: datetime
    bar_open: datetime
    index: dict[str, int]
    open: tuple[float, ...]
    close: tuple[float, ...]


@dataclass(slots=True)
class _Order:
    """What the broker knows of one client order id: the request and its current state."""

    request: OrderRequest
    status: OrderStatus = "accepted"
    filled_quantity: float = 0.0
    average_price: float | None = None
    reason: str | None = None
    fills: int = 0

    def update(
        self,
        status: OrderStatus,
        *,
        filled_quantity: float = 0.0,
        average_price: float | None = None,
        reason: str | None = None,
    ) -> OrderUpdate:
        """Move to ``status`` and return the OrderUpdate that says so."""
        self.status = status
        self.filled_quantity = filled_quantity
        self.average_price = average_price
        self.reason = reason
        return OrderUpdate(
            client_order_id=self.request.client_order_id,
            status=status,
            filled_quantity=filled_quantity,
            average_price=average_price,
            reason=reason,
        )


def _order_state(state: _Order) -> OrderState:
    request = state.request
    return OrderState(
        request.client_order_id,
        request.rebalance_id,
        request.asof,
        request.symbol,
        request.side,
        request.quantity,
        request.order_type,
        request.limit_price,
        request.reference_price,
        state.status,
        state.filled_quantity,
        state.average_price,
        state.reason,
        state.fills,
    )


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
    _orders: dict[str, _Order] = field(default_factory=dict)
    _queued: list[_Order] = field(default_factory=list)
    _bars: OrderedDict[datetime, _Bar] = field(default_factory=OrderedDict)
    _last_symbols: tuple[str, ...] | None = None
    _last_index: dict[str, int] = field(default_factory=dict)
    orders_kept: int = ORDERS_KEPT

    def __post_init__(self) -> None:
        if self.fill_price not in ("next_open", "close"):
            raise ValueError(
                f"fill_price must be 'next_open' or 'close', received {self.fill_price!r}"
            )
        self.cash = float(self.initial_cash)

    # -- inputs ----------------------------------------------------------------------------
    def submit(self, order: OrderRequest) -> list[EventPayload]:
        """Accept an order and fill it if its bar is known; a known client order id is
        answered with that order's current state and trades nothing."""
        known = self._orders.get(order.client_order_id)
        if known is not None:
            return [self._duplicate(order, known)]
        state = self._orders[order.client_order_id] = _Order(order)
        self._forget_old_orders()
        if order.order_type != "market":
            return [state.update("rejected", reason="simulated broker fills market orders only")]
        out: list[EventPayload] = [state.update("accepted")]
        bar = self._bar_for(order)
        if bar is None:
            self._queued.append(state)
        else:
            out += self._execute(state, bar)
        return out

    def reject(self, order: OrderRequest, reason: str) -> list[EventPayload]:
        """Refuse ``order`` without trading it (trading halted), remembering its client order
        id so that a later submit of it trades nothing either; a known id is answered with
        its order's current state, as by ``submit``."""
        known = self._orders.get(order.client_order_id)
        if known is not None:
            return [self._duplicate(order, known)]
        state = self._orders[order.client_order_id] = _Order(order)
        self._forget_old_orders()
        return [state.update("rejected", reason=reason)]

    def _forget_old_orders(self) -> None:
        """Drop the oldest terminal orders beyond ``orders_kept``; open ones always stay."""
        excess = len(self._orders) - self.orders_kept
        if excess <= 0:
            return
        old = []
        for client_order_id, state in self._orders.items():
            if state.status in TERMINAL_ORDER_STATUSES:
                old.append(client_order_id)
                if len(old) == excess:
                    break
        for client_order_id in old:
            del self._orders[client_order_id]

    def _duplicate(self, order: OrderRequest, known: _Order) -> OrderUpdate:
        fields = {
            "client_order_id": order.client_order_id,
            "status": known.status,
            "filled_quantity": known.filled_quantity,
        }
        if order == known.request:
            log.info("broker.duplicate_submit", **fields)
        else:  # the same id for a different order: a caller bug, the first order stands
            log.warning(
                "broker.duplicate_submit",
                differs_from_original=True,
                original=f"{known.request.side} {known.request.quantity} {known.request.symbol}",
                received=f"{order.side} {order.quantity} {order.symbol}",
                **fields,
            )
        reason = DUPLICATE_SUBMIT if known.reason is None else f"{DUPLICATE_SUBMIT}; {known.reason}"
        return OrderUpdate(
            client_order_id=order.client_order_id,
            status=known.status,
            filled_quantity=known.filled_quantity,
            average_price=known.average_price,
            reason=reason,
        )

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
        for state in self._queued:
            if state.status in TERMINAL_ORDER_STATUSES:
                continue  # executed by an earlier call that raised before updating the queue
            bar = self._bar_for(state.request)
            if bar is None:
                still_queued.append(state)
            else:
                out += self._execute(state, bar)
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
            state.update("cancelled", reason=reason)
            for state in self._queued
            if state.status not in TERMINAL_ORDER_STATUSES
        ]
        self._queued = []
        return out

    @property
    def open_order_count(self) -> int:
        return len(self._queued)

    # -- state -----------------------------------------------------------------------------
    def state(self) -> BrokerState:
        """Return the account as a struct, for the execution service's committed state."""
        universes: list[tuple[str, ...]] = []
        numbers: dict[int, int] = {}  # id of an index dict -> its universe (bars share them)

        def number(index: dict[str, int]) -> int:
            found = numbers.get(id(index))
            if found is None:
                found = numbers[id(index)] = len(universes)
                universes.append(tuple(index))
            return found

        last_universe = None if self._last_symbols is None else number(self._last_index)
        orders = [_order_state(state) for state in self._orders.values()]
        orders_by_id = self._orders
        return BrokerState(
            cash=self.cash,
            positions=dict(self.positions),
            orders=orders,
            # A queued order already terminal (a call that raised half-way) waits for nothing.
            queued=[
                state.request.client_order_id
                for state in self._queued
                if state.status not in TERMINAL_ORDER_STATUSES
                and orders_by_id.get(state.request.client_order_id) is state
            ],
            bars=[
                BarState(bar.close_time, bar.bar_open, number(bar.index), bar.open, bar.close)
                for bar in self._bars.values()
            ],
            universes=universes,
            last_universe=last_universe,
        )

    def restore(self, state: BrokerState) -> None:
        """Become the account ``state`` describes (settings stay this broker's)."""
        self.cash = state.cash
        self.positions = dict(state.positions)
        self._orders = {}
        for order in state.orders:
            request = OrderRequest(
                client_order_id=order.client_order_id,
                rebalance_id=order.rebalance_id,
                asof=order.asof,
                symbol=order.symbol,
                side=order.side,  # type: ignore[arg-type]
                quantity=order.quantity,
                order_type=order.order_type,  # type: ignore[arg-type]
                limit_price=order.limit_price,
                reference_price=order.reference_price,
            )
            self._orders[order.client_order_id] = _Order(
                request,
                status=order.status,  # type: ignore[arg-type]
                filled_quantity=order.filled_quantity,
                average_price=order.average_price,
                reason=order.reason,
                fills=order.fills,
            )
        self._queued = [self._orders[client_order_id] for client_order_id in state.queued]
        universes = [tuple(symbols) for symbols in state.universes]
        indexes = [{s: i for i, s in enumerate(symbols)} for symbols in universes]
        self._bars = OrderedDict(
            (
                bar.close_time,
                _Bar(bar.close_time, bar.bar_open, indexes[bar.universe], bar.open, bar.close),
            )
            for bar in state.bars
        )
        if state.last_universe is None:
            self._last_symbols, self._last_index = None, {}
        else:
            self._last_symbols = universes[state.last_universe]
            self._last_index = indexes[state.last_universe]

    # -- matching --------------------------------------------------------------------------
    def _bar_for(self, order: OrderRequest) -> _Bar | None:
        if self.fill_price == "close":
            return self._bars.get(order.asof)
        return next((bar for bar in self._bars.values() if bar.bar_open >= order.asof), None)

    def _execute(self, state: _Order, bar: _Bar) -> list[EventPayload]:
        order = state.request
        column = bar.index.get(order.symbol)
        prices = bar.close if self.fill_price == "close" else bar.open
        if column is None:
            return [
                state.update(
                    "rejected", reason=f"no bar for {order.symbol} at {bar.close_time.isoformat()}"
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
            return [state.update("rejected", reason=reason or "quantity rounds to zero")]
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
        # Numbered within the order: the same execution of the same order always has the same
        # id, whatever else this broker did before (a book dedupes fills by it).
        state.fills += 1
        executed_at = bar.close_time if self.fill_price == "close" else bar.bar_open
        fill = Fill(
            fill_id=f"{order.client_order_id}-f{state.fills}",
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
        update = state.update(
            "filled" if complete else "cancelled",
            filled_quantity=quantity,
            average_price=price,
            reason=None if complete else f"rest cancelled: {reason}",
        )
        return [fill, update]
