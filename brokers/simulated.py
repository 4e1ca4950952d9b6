"""The paper broker: a spot account that fills orders against replayed bars.

Orders reach the market ``latency_s`` after their decision and fill on the first bar opening
at or after that (``next_open``, ``next_vwap``), or on the bar closing then (``close``: what
classic vectorised backtesters assume). Prices, slippage, impact, volume caps and the
maker/taker split are ``brokers.fill_model``'s. Like an exchange's spot account it never lends:
a buy larger than the cash is cut to what the cash pays for, a sell larger than the position
to the position; the rest is cancelled with the reason. What a bar's volume cap leaves stays
open (``partially_filled``) and expires ``order_ttl_bars`` bars after the order first could
trade (0: good till cancelled).

Market rules (``lot_rules``, from ccxt market metadata when known) are checked on arrival,
as an exchange does: an order on a market the exchange lists as not trading, a limit price
off the tick, a quantity off the lot step, below the minimum amount or below the minimum
notional (at the order's reference price) is rejected with the rule it broke; so is a symbol
the bars do not carry.

Client order ids are idempotency keys, as on an exchange: an order trades at most once per
``client_order_id``. A duplicate submit is answered with the existing order's state (one
OrderUpdate with its current status, filled quantity and average price, the reason starting
``duplicate submit: order already known``); its fills are not sent again, they went out the
first time. Binance answers a duplicate ``newClientOrderId`` with an error naming it instead;
reporting the state is what a caller re-running a handler needs to close its books.

The account is part of the execution service's committed state (``snapshot``/``restore``):
cash, positions, every known order (its request and current state; the oldest terminal ones
beyond ``orders_kept`` are forgotten, open ones never), the orders working, the last bars it
holds for them, and the latest ``FILLS_KEPT`` fills (``fills_since``). A duplicate submit comes
from a rebalance run again after its service died between publishing its orders and
committing: right after the first copies, so the window only has to span one rebalance's
orders.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import msgspec
import structlog

from brokers.fill_model import BarQuote, FillModel, FillPrice
from brokers.protocol import DUPLICATE_SUBMIT, Balances, OpenOrder
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
from engine.portfolio.lots import LotRules

__all__ = [
    "DUPLICATE_SUBMIT",
    "ORDERS_KEPT",
    "BrokerState",
    "SimulatedBroker",
]

log = structlog.get_logger("brokers.simulated")
_QUANTITY_EPSILON = 1e-12
_STEP_TOLERANCE = 1e-9
# Float error in ``value / step`` grows with the number of steps (about 3e-16 of it): a tick
# of 0.000001 on a price of 4000 is 4e9 steps, so a tolerance of 1e-9 of the steps would let
# anything through; 1e-12 of them stays well above the error and well below a step.
_FLOAT_ERROR = 1e-12
_BARS_KEPT = 8
# Terminal orders remembered to answer a duplicate submit (open ones are always kept). They go
# into the execution service's state, committed with each message it handles (about 145 bytes
# each), and duplicates no longer arise inside a run (outputs leave with the commit), so the
# window covers a few rebalances of a large universe, not the account's history.
ORDERS_KEPT = 1024
# The latest fills kept for ``fills_since`` (the untrimmed fills stream is the ledger).
FILLS_KEPT = 1024
STATE_VERSION = 2


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
    reduce_only: bool
    status: str
    filled_quantity: float
    average_price: float | None
    reason: str | None
    fills: int
    bars_seen: int


class BarState(msgspec.Struct, frozen=True, array_like=True):
    """One bar the broker holds for the orders waiting for their fill bar."""

    close_time: UtcDatetime
    bar_open: UtcDatetime
    universe: int  # index into BrokerState.universes
    open: tuple[float, ...]
    high: tuple[float, ...]
    low: tuple[float, ...]
    close: tuple[float, ...]
    volume: tuple[float, ...] | None


class BrokerState(msgspec.Struct, frozen=True, kw_only=True):
    """The whole account of a ``SimulatedBroker`` (its settings are the config's, not state)."""

    version: int = STATE_VERSION
    cash: float
    positions: dict[str, float]
    orders: list[OrderState]  # oldest first
    queued: list[str]  # client order ids still working, in arrival order
    universes: list[tuple[str, ...]]
    bars: list[BarState]  # oldest first
    last_universe: int | None
    fills: list[Fill] = []  # the latest FILLS_KEPT, oldest first


@dataclass
class _Bar:
    close_time: datetime
    bar_open: datetime
    index: dict[str, int]
    open: tuple[float, ...]
    high: tuple[float, ...]
    low: tuple[float, ...]
    close: tuple[float, ...]
    volume: tuple[float, ...] | None

    def quote(self, column: int) -> BarQuote:
        volume = None if self.volume is None else self.volume[column]
        return BarQuote(
            self.open[column], self.high[column], self.low[column], self.close[column], volume
        )


@dataclass(slots=True)
class _Order:
    """What the broker knows of one client order id: the request and its current state."""

    request: OrderRequest
    status: OrderStatus = "accepted"
    filled_quantity: float = 0.0
    average_price: float | None = None
    reason: str | None = None
    fills: int = 0
    bars_seen: int = 0  # bars it could trade on so far (for order_ttl_bars)

    def update(self, status: OrderStatus, *, reason: str | None = None) -> OrderUpdate:
        """Move to ``status`` and return the OrderUpdate that says so."""
        self.status = status
        self.reason = reason
        return self.as_update()

    def as_update(self, reason: str | None = None) -> OrderUpdate:
        return OrderUpdate(
            client_order_id=self.request.client_order_id,
            status=self.status,
            filled_quantity=self.filled_quantity,
            average_price=self.average_price,
            reason=self.reason if reason is None else reason,
        )

    @property
    def remaining(self) -> float:
        return self.request.quantity - self.filled_quantity


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
        request.reduce_only,
        state.status,
        state.filled_quantity,
        state.average_price,
        state.reason,
        state.fills,
        state.bars_seen,
    )


def _off_step(value: float, step: float) -> bool:
    """Whether ``value`` (a quantity, a price) is not a whole number of ``step``s, float
    error aside (0.3 / 0.1 = 2.9999999999999996 is three steps)."""
    steps = value / step
    return abs(steps - round(steps)) > _STEP_TOLERANCE + _FLOAT_ERROR * abs(steps)


@dataclass
class SimulatedBroker:
    """Account state and matching rules of the paper broker (no I/O: returns events)."""

    initial_cash: float
    fee_rate: float = 0.001  # taker
    fill_price: FillPrice = "next_open"
    fractional: bool = True
    fee_currency: str = "USDT"
    maker_fee_rate: float | None = None  # None: the taker rate
    slippage_bps: float = 0.0
    impact_coefficient: float = 0.0
    max_participation: float = 0.0
    order_ttl_bars: int = 1
    latency_s: float = 0.0
    lot_rules: dict[str, LotRules] = field(default_factory=dict)
    orders_kept: int = ORDERS_KEPT
    name: str = "simulated"
    cash: float = field(init=False)
    positions: dict[str, float] = field(default_factory=dict)
    model: FillModel = field(init=False)
    _orders: dict[str, _Order] = field(default_factory=dict)
    _queued: list[_Order] = field(default_factory=list)
    _bars: OrderedDict[datetime, _Bar] = field(default_factory=OrderedDict)
    _fills: list[Fill] = field(default_factory=list)
    _last_symbols: tuple[str, ...] | None = None
    _last_index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model = FillModel(
            fill_price=self.fill_price,
            slippage_bps=self.slippage_bps,
            impact_coefficient=self.impact_coefficient,
            max_participation=self.max_participation,
            taker_fee=self.fee_rate,
            maker_fee=self.fee_rate if self.maker_fee_rate is None else self.maker_fee_rate,
        )
        if self.order_ttl_bars < 0:
            raise ValueError(f"order_ttl_bars must be >= 0, received {self.order_ttl_bars}")
        if not (math.isfinite(self.latency_s) and self.latency_s >= 0):
            raise ValueError(f"latency_s must be finite and >= 0, received {self.latency_s}")
        self.cash = float(self.initial_cash)

    # -- orders in -------------------------------------------------------------------------
    def submit(self, order: OrderRequest) -> list[EventPayload]:
        """Accept an order and fill it if its bar is known; a known client order id is
        answered with that order's current state and trades nothing."""
        known = self._orders.get(order.client_order_id)
        if known is not None:
            return [self._duplicate(order, known)]
        state = self._orders[order.client_order_id] = _Order(order)
        self._forget_old_orders()
        reason = self._market_rule_broken(order)
        if reason is not None:
            log.info(
                "broker.order_rejected",
                client_order_id=order.client_order_id,
                symbol=order.symbol,
                reason=reason,
            )
            return [state.update("rejected", reason=reason)]
        out: list[EventPayload] = [state.update("accepted")]
        self._queued.append(state)
        for bar in self._bars.values():
            if state.status in TERMINAL_ORDER_STATUSES:
                break
            if self._can_trade_on(state.request, bar):
                out += self._work(state, bar, {})
        self._queued = [s for s in self._queued if s.status not in TERMINAL_ORDER_STATUSES]
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

    def cancel(self, client_order_id: str, reason: str) -> list[EventPayload]:
        """Cancel a working order; a terminal one answers its state, an unknown id is refused."""
        state = self._orders.get(client_order_id)
        if state is None:
            return [
                OrderUpdate(
                    client_order_id=client_order_id,
                    status="rejected",
                    reason=f"cancel refused: unknown order {client_order_id}",
                )
            ]
        if state.status in TERMINAL_ORDER_STATUSES:
            return [state.as_update()]
        self._queued = [s for s in self._queued if s is not state]
        return [state.update("cancelled", reason=reason)]

    def cancel_open_orders(self, reason: str) -> list[EventPayload]:
        """Cancel every order still working (halt, end of data)."""
        out: list[EventPayload] = [
            state.update("cancelled", reason=reason)
            for state in self._queued
            if state.status not in TERMINAL_ORDER_STATUSES
        ]
        self._queued = []
        return out

    def _market_rule_broken(self, order: OrderRequest) -> str | None:
        """The market rule ``order`` breaks, said as an exchange would (None: it passes)."""
        if self._last_index and order.symbol not in self._last_index:
            return f"unknown symbol {order.symbol}: the market carries no such pair"
        rules = self.lot_rules.get(order.symbol)
        if rules is None:
            return None
        if not rules.trading:
            return f"HALTED: {order.symbol} is not trading (the exchange lists the market inactive)"
        limit = order.limit_price if order.order_type == "limit" else None
        if (
            limit is not None
            and rules.price_step is not None
            and _off_step(limit, rules.price_step)
        ):
            return (
                f"PRICE_FILTER: limit price {limit:.12g} of {order.symbol} is not a multiple of "
                f"its tick {rules.price_step:g}"
            )
        quantity = order.quantity
        if rules.amount_step is not None and _off_step(quantity, rules.amount_step):
            return (
                f"LOT_SIZE: quantity {quantity:.12g} of {order.symbol} is not a multiple of "
                f"its step {rules.amount_step:g}"
            )
        if quantity < rules.min_amount:
            return (
                f"LOT_SIZE: quantity {quantity:.12g} of {order.symbol} is below the minimum "
                f"amount {rules.min_amount:g}"
            )
        price = order.limit_price or order.reference_price or self._last_close(order.symbol)
        if price is not None and quantity * price < rules.min_notional:
            return (
                f"MIN_NOTIONAL: {quantity:.12g} {order.symbol} at {price:.10g} is worth "
                f"{quantity * price:.10g}, below the minimum {rules.min_notional:g}"
            )
        return None

    def _last_close(self, symbol: str) -> float | None:
        for bar in reversed(self._bars.values()):
            column = bar.index.get(symbol)
            if column is not None:
                return bar.close[column]
        return None

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
        return known.as_update(reason)

    # -- bars in ---------------------------------------------------------------------------
    def on_bar(self, bars: BarSet, close_time: datetime | None = None) -> list[EventPayload]:
        """Record a bar and work every order that can trade on it, in arrival order."""
        close_time = bars.close_time if close_time is None else close_time
        if bars.symbols is not self._last_symbols and bars.symbols != self._last_symbols:
            self._last_index = {symbol: i for i, symbol in enumerate(bars.symbols)}
            self._last_symbols = bars.symbols
        bar = self._bars[close_time] = _Bar(
            close_time=close_time,
            bar_open=bars.bar_open,
            index=self._last_index,
            open=bars.open,
            high=bars.high,
            low=bars.low,
            close=bars.close,
            volume=bars.volume,
        )
        while len(self._bars) > _BARS_KEPT:
            self._bars.popitem(last=False)
        out: list[EventPayload] = []
        used: dict[str, float] = {}  # volume already filled on this bar, by symbol
        for state in self._queued:
            if state.status in TERMINAL_ORDER_STATUSES:
                continue  # executed by an earlier call that raised before updating the queue
            if self._can_trade_on(state.request, bar):
                out += self._work(state, bar, used)
        self._queued = [s for s in self._queued if s.status not in TERMINAL_ORDER_STATUSES]
        return out

    def on_block(self, block: BarBlock) -> list[EventPayload]:
        """Record a block of bars: bar by bar while orders are working, else only its last
        bar, the only one a later order can be decided on (blocks end at ticks)."""
        out: list[EventPayload] = []
        if self._queued:
            for bars in block.rows():
                out += self.on_bar(bars, bars.close_time)
            return out
        last = block.last_row()
        if last is not None:
            out = self.on_bar(last, last.close_time)
        return out

    def reconcile(self) -> list[EventPayload]:
        """Nothing to reconcile: this account is the execution service's own state."""
        return []

    # -- queries ---------------------------------------------------------------------------
    @property
    def open_order_count(self) -> int:
        return len(self._queued)

    def open_orders(self) -> list[OpenOrder]:
        return [
            OpenOrder(s.request, s.status, s.filled_quantity, s.average_price)
            for s in self._queued
            if s.status not in TERMINAL_ORDER_STATUSES
        ]

    def order_status(self, client_order_id: str) -> OrderUpdate | None:
        state = self._orders.get(client_order_id)
        return None if state is None else state.as_update()

    def balances(self) -> Balances:
        return Balances(self.cash, dict(self.positions), self.fee_currency)

    def fills_since(self, since: datetime) -> list[Fill]:
        return [fill for fill in self._fills if fill.executed_at >= since]

    # -- matching --------------------------------------------------------------------------
    def _arrival(self, order: OrderRequest) -> datetime:
        return order.asof + timedelta(seconds=self.latency_s) if self.latency_s else order.asof

    def _can_trade_on(self, order: OrderRequest, bar: _Bar) -> bool:
        if self.fill_price == "close":
            return bar.close_time >= self._arrival(order)
        return bar.bar_open >= self._arrival(order)

    def _work(self, state: _Order, bar: _Bar, used: dict[str, float]) -> list[EventPayload]:
        """Trade what ``bar`` allows of ``state``; expire it when its bars are spent."""
        order = state.request
        column = bar.index.get(order.symbol)
        resting = state.bars_seen > 0
        state.bars_seen += 1
        if column is None:
            # The symbol did not trade in this bar (a gap, a halted market): nothing fills,
            # and the bar counts against the order's time to live.
            out: list[EventPayload] = []
            missing = f" (no bar for {order.symbol} at {bar.close_time.isoformat()})"
        else:
            out = self._trade(state, bar.quote(column), bar, resting, used)
            missing = ""
        if state.status not in TERMINAL_ORDER_STATUSES and (
            self.order_ttl_bars and state.bars_seen >= self.order_ttl_bars
        ):
            unfilled = (
                f"filled {state.filled_quantity:.12g} of {order.quantity:.12g}"
                if state.filled_quantity
                else "nothing filled"
            )
            out.append(
                state.update(
                    "expired",
                    reason=f"expired after {state.bars_seen} bar(s): {unfilled}{missing}",
                )
            )
        return out

    def _trade(
        self, state: _Order, quote_bar: BarQuote, bar: _Bar, resting: bool, used: dict[str, float]
    ) -> list[EventPayload]:
        order = state.request
        quote = self.model.quote(order.side, order.limit_price, quote_bar, resting)
        if quote is None:
            return []  # a limit order the bar did not reach
        fee_rate = self.model.fee_rate(quote)
        volume_left = self.model.volume_cap(quote_bar.volume) - used.get(order.symbol, 0.0)
        wanted = state.remaining
        quantity = min(wanted, max(volume_left, 0.0))
        capped_by = "volume" if quantity < wanted * (1 - 1e-9) else ""
        price = self.model.price(order.side, quote, quantity, quote_bar.volume, order.limit_price)
        if order.side == "buy":
            affordable = max(self.cash / (price * (1.0 + fee_rate)), 0.0)
            if affordable < quantity * (1 - 1e-9):
                quantity, capped_by = affordable, "cash"
                # Less quantity, less impact: the price only falls, so it stays affordable.
                price = self.model.price(
                    order.side, quote, quantity, quote_bar.volume, order.limit_price
                )
        else:
            held = self.positions.get(order.symbol, 0.0)
            if held < quantity * (1 - 1e-9):
                quantity, capped_by = held, "position"
        whole = ""
        if not self.fractional:
            floored = math.floor(quantity + _QUANTITY_EPSILON)
            if floored < quantity - _QUANTITY_EPSILON and not capped_by:
                whole = "whole units only"
            quantity = floored
        if quantity <= _QUANTITY_EPSILON:
            return self._nothing_traded(state, capped_by, whole)
        out: list[EventPayload] = [self._book(state, quantity, price, fee_rate, bar)]
        used[order.symbol] = used.get(order.symbol, 0.0) + quantity
        if state.remaining <= order.quantity * 1e-9:
            out.append(state.update("filled"))
        elif capped_by in ("cash", "position") or whole:
            why = whole or self._shortfall(order.side, capped_by, partial=True)
            if capped_by == "cash":
                log.info(
                    "broker.buy_scaled_to_cash",
                    client_order_id=order.client_order_id,
                    symbol=order.symbol,
                    requested=order.quantity,
                    filled=state.filled_quantity,
                    cash_left=round(self.cash, 2),
                )
            out.append(state.update("cancelled", reason=f"rest cancelled: {why}"))
        else:  # the volume cap: the rest works on the next bar
            out.append(state.update("partially_filled", reason="bar volume cap reached"))
        return out

    def _nothing_traded(self, state: _Order, capped_by: str, whole: str) -> list[EventPayload]:
        if capped_by == "volume":
            return []  # no volume left on this bar: the order waits for the next
        if state.filled_quantity > 0:
            why = whole or self._shortfall(state.request.side, capped_by, partial=True)
            return [state.update("cancelled", reason=f"rest cancelled: {why}")]
        why = self._shortfall(state.request.side, capped_by, partial=False) if capped_by else ""
        return [state.update("rejected", reason=why or whole or "quantity rounds to zero")]

    @staticmethod
    def _shortfall(side: str, capped_by: str, partial: bool) -> str:
        if side == "buy":
            return "cash covers only part" if partial else "insufficient cash"
        return "position smaller than order" if partial else "no position to sell"

    def _book(self, state: _Order, quantity: float, price: float, fee_rate: float, bar: _Bar):
        order = state.request
        notional = quantity * price
        fee = notional * fee_rate
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
        filled = state.filled_quantity + quantity
        state.average_price = (
            price
            if state.average_price is None
            else (state.average_price * state.filled_quantity + notional) / filled
        )
        state.filled_quantity = filled
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
            # The account pays from its one cash balance: the pair's quote currency.
            fee_currency=order.symbol.partition("/")[2] or self.fee_currency,
            executed_at=executed_at,
        )
        self._fills.append(fill)
        if len(self._fills) > FILLS_KEPT:
            del self._fills[: len(self._fills) - FILLS_KEPT]
        return fill

    # -- state -----------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state())

    def restore(self, blob: bytes) -> None:
        state = msgspec.msgpack.decode(blob, type=BrokerState)
        if state.version != STATE_VERSION:
            raise ValueError(
                f"simulated broker state version {state.version} is not {STATE_VERSION}: "
                "written by another build; start the account over (--fresh)"
            )
        self.restore_state(state)

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
                BarState(
                    bar.close_time,
                    bar.bar_open,
                    number(bar.index),
                    bar.open,
                    bar.high,
                    bar.low,
                    bar.close,
                    bar.volume,
                )
                for bar in self._bars.values()
            ],
            universes=universes,
            last_universe=last_universe,
            fills=list(self._fills),
        )

    def restore_state(self, state: BrokerState) -> None:
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
                reduce_only=order.reduce_only,
            )
            self._orders[order.client_order_id] = _Order(
                request,
                status=order.status,  # type: ignore[arg-type]
                filled_quantity=order.filled_quantity,
                average_price=order.average_price,
                reason=order.reason,
                fills=order.fills,
                bars_seen=order.bars_seen,
            )
        self._queued = [self._orders[client_order_id] for client_order_id in state.queued]
        universes = [tuple(symbols) for symbols in state.universes]
        indexes = [{s: i for i, s in enumerate(symbols)} for symbols in universes]
        self._bars = OrderedDict(
            (
                bar.close_time,
                _Bar(
                    bar.close_time,
                    bar.bar_open,
                    indexes[bar.universe],
                    bar.open,
                    bar.high,
                    bar.low,
                    bar.close,
                    bar.volume,
                ),
            )
            for bar in state.bars
        )
        self._fills = list(state.fills)
        if state.last_universe is None:
            self._last_symbols, self._last_index = None, {}
        else:
            self._last_symbols = universes[state.last_universe]
            self._last_index = indexes[state.last_universe]
