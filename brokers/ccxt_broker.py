"""The exchange broker: orders placed, polled and reconciled through ccxt's unified API.

Idempotency rests on the client order id. Ours are too long for Binance, so each is sent as a
digest of it (``venue_client_id``), the same on every run. The execution service commits this
adapter's ``snapshot`` only after a call returns, so a crash between ``create_order`` reaching
the exchange and that commit leaves an order the restarted adapter has no record of, and the
same OrderRequest comes again. Hence ``submit`` of an unknown id first looks the order up at
the exchange by its venue client id and answers with what it finds (its state and every fill);
it creates the order only when the exchange has none. A timed-out create is the same case: the
retry looks the order up before sending it again, so an order is never placed twice.

Every call either returns the events it caused together with the state changes behind them,
or raises and leaves the adapter as it was: a handler retried in place then learns again from
the exchange what the failed try had seen, and its events go out once.

An unreachable exchange is a state this adapter carries, not an exception that loses an order.
A ``submit`` that cannot reach it (the market list, the lookup or the create still failing
after the retries, or a garbled answer to the create) cannot tell whether the order was placed
(by this try, or before a crash if the request is a redelivery); raising would leave the
OrderRequest to be dead-lettered with no terminal update while the order may be live at the
exchange. So the order is kept with its outcome unknown (``OrderRecord.unknown_since_ms``,
committed in ``snapshot``), answered with one non-terminal ``accepted`` update whose reason
says so, and listed by ``open_orders``. Every poll (``on_bar``, ``on_block``) and ``reconcile``
looks it up by its venue client id:

- found: adopted as ``submit`` adopts a found order (its fills, its status, one terminal update);
- not found, once ``CcxtSettings.unplaced_after_s`` have passed since it was sent (a create can
  still land until the exchange's receive window is over): it was never placed and ends
  ``rejected`` ("not placed: ..."). It is not created late: the rebalancer plans again at its
  next rebalance, on the account as it is then;
- still unreachable, or not found too soon: it stays unknown, and the poll logs
  ``broker.outcome_still_unknown`` once, with how long.

A duplicate submit of it answers its current state and sends nothing. ``cancel`` of it (an
operator's call, who can try again) looks it up first and raises ``BrokerError``, leaving it
unknown, while that cannot settle it. ``cancel_open_orders`` (a halt) cancels what it can and
leaves an order it cannot settle for the poll, which cancels it if it finds it working.
``reject`` (a halt) of an id it cannot look up keeps it unknown the same way; found, it is
adopted, not found it ends ``rejected`` with the halt's reason.

A poll survives an outage too: one that cannot reach the exchange returns what it learned
before the failure (whole orders: an order it failed on is left as it was), logs
``broker.poll_failed`` and lets the next poll catch up, so bars keep flowing. ``reconcile``
(on start) still raises while the exchange cannot be reached, leaving everything as it was.

Order errors (a filter failure, insufficient funds, an unknown symbol) are the exchange's
answer: a ``rejected`` update carrying its message, never retried. Fills are the exchange's
trades, one per trade, ids built from our client order id and the trade id, so each is booked
once across restarts; fees are the exchange's, in its currency.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import ccxt
import msgspec
import structlog

from brokers.ccxt_exchange import CcxtSettings, ExchangeCalls, describe, exchange_from_settings
from brokers.ccxt_orders import (
    READABLE_VERSIONS,
    CcxtState,
    OrderRecord,
    RecordState,
    StateHeader,
    fill_from_trade,
    terminal_status,
    venue_client_id,
)
from brokers.ccxt_reads import ExchangeReads, find_by_client_id
from brokers.protocol import DUPLICATE_SUBMIT, Balances, BrokerError, OpenOrder
from engine.events import BarBlock, BarSet, EventPayload, Fill, OrderRequest, OrderUpdate
from engine.logging import mask_secrets
from engine.portfolio.lots import LotRules, lot_rules_from_ccxt

__all__ = [
    "DUPLICATE_SUBMIT",
    "CcxtBroker",
    "CcxtSettings",
    "exchange_from_settings",
    "venue_client_id",
]

log = structlog.get_logger("brokers.ccxt")
_STEP_TOLERANCE = 1e-9
# A tick can be a tiny part of the price (BTCUSDT: 0.000001 at 4000, 2.5e-10 of it), so a limit
# price is compared to its rounding within float error of the price only.
_PRICE_TOLERANCE = 1e-12


class CcxtBroker:
    """``brokers.protocol.Broker`` over a ccxt exchange (see the module docstring).

    ``exchange`` must keep ccxt's rate limiter on (``enableRateLimit``); ``sleep`` does the
    retry backoff waits (tests pass one that does not sleep); ``clock`` is the time in seconds
    (how long an order's outcome has been unknown; tests pass the test exchange's clock).
    """

    def __init__(
        self,
        exchange: ccxt.Exchange,
        settings: CcxtSettings | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not exchange.enableRateLimit:
            raise ValueError(
                f"CcxtBroker: exchange {exchange.id!r} has enableRateLimit off; build it with "
                "enableRateLimit=True so ccxt keeps to the exchange's rate limits"
            )
        self.exchange = exchange
        self.settings = settings or CcxtSettings()
        self.name = f"ccxt:{exchange.id}"
        self._clock = clock
        self._calls = ExchangeCalls(exchange, self.settings, sleep, self.name)
        self._reads = ExchangeReads(self._calls, self.settings.trades_page)
        self._orders: dict[str, OrderRecord] = {}  # our client order id -> record, oldest first
        self._last_fill_ms: int | None = None

    # -- orders in -------------------------------------------------------------------------
    def submit(self, order: OrderRequest) -> list[EventPayload]:
        """Place ``order``, or answer with its state: a known id from this adapter's records,
        an unknown one from the exchange when the order is there already. An exchange that
        cannot be reached leaves the order's outcome unknown (see the module docstring)."""
        known = self._orders.get(order.client_order_id)
        if known is not None:
            return [self._duplicate(order, known)]
        try:
            with self._transaction():
                return self._place(self._new_record(order))
        except BrokerError as error:
            absent = f"not placed: the exchange was unreachable when it was sent ({_text(error)})"
            return [self._unknown(self._new_record(order), "create_order", error, absent)]

    def reject(self, order: OrderRequest, reason: str) -> list[EventPayload]:
        """Refuse ``order`` without sending it; an order the exchange holds already (placed
        before a crash) is answered with its state instead, as by ``submit``. An exchange
        that cannot be reached leaves it unknown until a poll can look it up."""
        known = self._orders.get(order.client_order_id)
        if known is not None:
            return [self._duplicate(order, known)]
        try:
            with self._transaction():
                record = self._new_record(order)
                if order.symbol in self._reads.markets():
                    found = self._reads.lookup(record)
                    if found is not None:
                        return self._adopt(record, found)
                return [self._refuse(record, reason)]
        except BrokerError as error:
            return [self._unknown(self._new_record(order), "reject", error, reason)]

    def cancel(self, client_order_id: str, reason: str) -> list[EventPayload]:
        """Cancel a working order; a terminal one answers its state, an unknown id is refused.
        An order whose outcome is unknown is looked up first; while that cannot settle it
        (unreachable, or not found before ``unplaced_after_s``) this raises BrokerError and
        leaves it as it was: an operator's call, tried again, not a halt's."""
        record = self._orders.get(client_order_id)
        if record is None:
            return [
                OrderUpdate(
                    client_order_id=client_order_id,
                    status="rejected",
                    reason=f"cancel refused: unknown order {client_order_id}",
                )
            ]
        if record.terminal_sent:
            return [record.as_update()]
        with self._transaction():
            out: list[EventPayload] = []
            if record.outcome_unknown:
                # An operator's call: while the lookup cannot settle the order, raise (they can
                # try again) rather than report a cancel of an order that may be working.
                out += self._resolve(record)
                if record.outcome_unknown:
                    raise BrokerError(
                        f"{self.name}: cancel of {client_order_id} refused: its outcome is "
                        f"still unknown (no order {record.venue_client_id} at the exchange yet, "
                        f"and a create sent {self._unknown_for_s(record):.0f} s ago may still "
                        "land); try again later"
                    )
                if record.terminal_sent:
                    return out
            return out + self._cancel(record, reason)

    def cancel_open_orders(self, reason: str) -> list[EventPayload]:
        """Cancel every order still working (halt, end of data), oldest first. An order whose
        outcome is unknown is looked up first; one that cannot be settled now is left for the
        poll, which cancels it if it finds it working."""
        with self._transaction():
            out: list[EventPayload] = []
            left: list[OrderRecord] = []
            failure: BrokerError | None = None
            for record in self._working():
                if record.outcome_unknown and failure is None:
                    try:
                        with self._undo_on_error(record):
                            out += self._resolve(record)
                    except BrokerError as error:
                        failure = error  # unreachable: look the other unknown ones up later
                if record.outcome_unknown:
                    record.cancel_pending = reason
                    left.append(record)
                elif not record.terminal_sent:
                    out += self._cancel(record, reason)
            if left:
                log.warning(
                    "broker.cancel_left_unknown",
                    broker=self.name,
                    client_order_ids=[r.client_order_id for r in left],
                    reason=reason,
                    error=None if failure is None else _text(failure),
                    hint="outcome unknown: a poll cancels each one it finds working at the "
                    "exchange, and rejects each one it proves was never placed",
                )
            return out

    # -- the exchange moves on -------------------------------------------------------------
    def on_bar(self, bars: BarSet) -> list[EventPayload]:
        """Poll the exchange for the orders still working: new trades, status changes."""
        return self._poll()

    def on_block(self, block: BarBlock) -> list[EventPayload]:
        """Poll once for the whole block: the exchange trades in real time, not per bar."""
        return self._poll()

    def reconcile(self) -> list[EventPayload]:
        """On start: book the trades and status changes of the orders open in the restored
        state that happened while the adapter was down, and settle the orders whose outcome
        is unknown. Nothing is submitted. Raises BrokerError (changing nothing) while the
        exchange cannot be reached."""
        working = self._working()
        if not working:
            return []
        with self._transaction():
            known = [r for r in working if not r.outcome_unknown]
            reported = {r.client_order_id: r.filled_quantity for r in known}
            out: list[EventPayload] = self._scan_missed_trades(known) if known else []
            for record in working:
                if record.outcome_unknown:
                    out += self._resolve(record)
                else:
                    out += self._refresh(record, reported[record.client_order_id])
            self._log_still_unknown(None)
            log.info(
                "broker.reconciled",
                broker=self.name,
                open_orders=len(working),
                events=len(out),
                fills=sum(isinstance(event, Fill) for event in out),
            )
            return out

    # -- queries ---------------------------------------------------------------------------
    def open_orders(self) -> list[OpenOrder]:
        """The orders working as of the last call that saw them, oldest first (no exchange
        call: ``on_bar`` and ``reconcile`` keep them current). Orders whose outcome is unknown
        are listed too, ``accepted`` with no exchange order id, so an operator sees them."""
        return [
            OpenOrder(r.request, r.status, r.filled_quantity, r.average_price, r.exchange_order_id)
            for r in self._working()
        ]

    def order_status(self, client_order_id: str) -> OrderUpdate | None:
        record = self._orders.get(client_order_id)
        return None if record is None else record.as_update()

    def balances(self) -> Balances:
        """Free quote cash, and every other currency with a non-zero total as ``BASE/QUOTE``."""
        balance = self._reads.balance()
        quote = self.settings.quote_currency
        cash = float((balance.get(quote) or {}).get("free") or 0.0)
        positions = {
            f"{currency}/{quote}": float(total)
            for currency, total in (balance.get("total") or {}).items()
            if currency != quote and total
        }
        return Balances(cash=cash, positions=positions, quote_currency=quote)

    def fills_since(self, since: datetime) -> list[Fill]:
        """The fills of this adapter's orders executed at or after ``since``, from the
        exchange's trade list, oldest first."""
        by_exchange_id = self._by_exchange_id()
        symbols = list(dict.fromkeys(r.symbol for r in self._orders.values()))
        fills: list[Fill] = []
        for symbol in symbols:
            for trade in self._reads.trades_since(symbol, int(since.timestamp() * 1000)):
                record = by_exchange_id.get((symbol, str(trade.get("order"))))
                if record is not None:
                    fills.append(fill_from_trade(record, trade, int(trade["timestamp"])))
        return sorted(fills, key=lambda fill: (fill.executed_at, fill.fill_id))

    def lot_rules(self) -> dict[str, LotRules]:
        """The quantity rules of every market quoted in the account's currency, so the
        rebalancer can round orders to what the exchange accepts."""
        quote = self.settings.quote_currency
        return {
            symbol: lot_rules_from_ccxt(market, self.exchange.precisionMode)
            for symbol, market in self._reads.markets().items()
            if market.get("quote") == quote and market.get("spot", True)
        }

    # -- state -----------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(
            CcxtState(
                exchange=self.exchange.id,
                orders=[RecordState.of(record) for record in self._orders.values()],
                last_fill_ms=self._last_fill_ms,
            )
        )

    def restore(self, blob: bytes) -> None:
        header = msgspec.msgpack.decode(blob, type=StateHeader)
        if header.version not in READABLE_VERSIONS:
            readable = " or ".join(str(v) for v in READABLE_VERSIONS)
            raise ValueError(
                f"{self.name}: the committed state is version {header.version}, this build "
                f"reads version {readable}: it was written by another build of the adapter; "
                "run the build that wrote it, or start over with --fresh after checking the "
                "exchange's open orders"
            )
        state = msgspec.msgpack.decode(blob, type=CcxtState)
        if state.exchange != self.exchange.id:
            raise ValueError(
                f"{self.name}: the state holds orders of exchange {state.exchange!r}, this "
                f"adapter trades on {self.exchange.id!r}"
            )
        self._orders = {row.client_order_id: row.record() for row in state.orders}
        self._last_fill_ms = state.last_fill_ms

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Undo this adapter's state changes when the block raises (see module docstring)."""
        before = self.snapshot()
        try:
            yield
        except BaseException:
            self.restore(before)
            raise
        self._forget_old_orders()

    @contextmanager
    def _undo_on_error(self, record: OrderRecord) -> Iterator[None]:
        """Undo what the block changed of ``record`` (and the fill watermark) when it raises:
        a poll keeps what it learned of the orders before the one it failed on."""
        saved = dataclasses.replace(record, trade_ids=list(record.trade_ids))
        last_fill_ms = self._last_fill_ms
        try:
            yield
        except BaseException:
            for column in dataclasses.fields(OrderRecord):
                setattr(record, column.name, getattr(saved, column.name))
            self._last_fill_ms = last_fill_ms
            raise

    # -- placing ---------------------------------------------------------------------------
    def _new_record(self, order: OrderRequest) -> OrderRecord:
        return OrderRecord(request=order, venue_client_id=venue_client_id(order.client_order_id))

    def _place(self, record: OrderRecord) -> list[EventPayload]:
        """Check ``record``'s order against the market's rules, then find or create it.
        Raises BrokerError when the exchange cannot be reached or its answer is garbled."""
        order = record.request
        refused = self._market_rule_broken(order)
        if refused is not None:
            return [self._refuse(record, refused)]
        try:
            placed = self._calls.run(
                "create_order", order.symbol, lambda: self._find_or_create(record)
            )
        except ccxt.ExchangeError as error:  # the exchange's answer: not placed
            return [self._refuse(record, f"{self.exchange.id}: {describe(error)}")]
        except ccxt.BaseError as error:  # a garbled answer: the outcome is unknown
            raise self._calls.unanswered("create_order", order.symbol, error) from error
        return self._adopt(record, placed)

    def _unknown(
        self, record: OrderRecord, call: str, error: BrokerError, absent_reason: str
    ) -> OrderUpdate:
        """Keep ``record``'s order with its outcome unknown (see the module docstring) and
        return the non-terminal update that says so."""
        record.unknown_since_ms = self._now_ms()
        record.absent_reason = absent_reason
        record.reason = (
            f"outcome unknown: the exchange was unreachable ({_text(error)}); the order will "
            "be looked up by its client id at the next poll, not sent again"
        )
        self._remember(record)
        request = record.request
        log.warning(
            "broker.outcome_unknown",
            broker=self.name,
            call=call,
            client_order_id=request.client_order_id,
            venue_client_id=record.venue_client_id,
            symbol=request.symbol,
            side=request.side,
            quantity=request.quantity,
            order_type=request.order_type,
            error=_text(error),
            hint="placed or not: each poll and reconcile look it up by its venue client id",
        )
        return record.as_update()

    def _market_rule_broken(self, order: OrderRequest) -> str | None:
        """What makes ``order`` unplaceable before it is sent (None: nothing). ccxt would
        silently cut a quantity off the lot step and round a limit price off the tick, so those
        are refused here, as the paper broker refuses them, and so is a market the loaded
        market list shows not trading; the exchange judges the rest."""
        market = self._reads.markets().get(order.symbol)
        if market is None:
            return f"unknown symbol {order.symbol}: {self.exchange.id} lists no such market"
        if market.get("active") is False:
            return (
                f"HALTED: {order.symbol} is not trading ({self.exchange.id} lists the market "
                "inactive)"
            )
        if order.order_type == "limit" and order.limit_price is not None:
            off_tick = self._price_off_tick(order.symbol, order.limit_price, market)
            if off_tick is not None:
                return off_tick
        try:
            precise = float(self.exchange.amount_to_precision(order.symbol, order.quantity))
        except ccxt.BaseError as error:
            return f"LOT_SIZE: quantity {order.quantity:.12g} of {order.symbol}: {describe(error)}"
        if abs(precise - order.quantity) > _STEP_TOLERANCE * max(order.quantity, 1e-12):
            step = (market.get("precision") or {}).get("amount")
            return (
                f"LOT_SIZE: quantity {order.quantity:.12g} of {order.symbol} is not a multiple "
                f"of its step {step:g}"
                if isinstance(step, (int, float))
                else f"LOT_SIZE: quantity {order.quantity:.12g} of {order.symbol} is off its step"
            )
        return None

    def _price_off_tick(self, symbol: str, price: float, market: dict[str, Any]) -> str | None:
        """Why the limit ``price`` is off ``symbol``'s tick (None: on it, or no tick known)."""
        tick = (market.get("precision") or {}).get("price")
        if tick is None:
            return None
        try:
            precise = float(self.exchange.price_to_precision(symbol, price))
        except ccxt.BaseError as error:
            return f"PRICE_FILTER: limit price {price:.12g} of {symbol}: {describe(error)}"
        if abs(precise - price) <= _PRICE_TOLERANCE * price:
            return None
        if self.exchange.precisionMode == ccxt.DECIMAL_PLACES:
            tick = 10.0 ** -int(tick)
        return (
            f"PRICE_FILTER: limit price {price:.12g} of {symbol} is not a multiple of its tick "
            f"{tick:g}"
        )

    def _find_or_create(self, record: OrderRecord) -> dict[str, Any]:
        """One try of placing ``record``'s order: look it up first (a crash or a lost response
        may have placed it already), create it only when the exchange has none."""
        try:
            found = find_by_client_id(self.exchange, record)
        except ccxt.NetworkError:
            raise  # retried by the caller
        except ccxt.BaseError as error:  # cannot tell whether it exists: do not create
            raise self._calls.unanswered("fetch_order", record.symbol, error) from error
        if found is not None:
            log.warning(
                "broker.order_found",
                broker=self.name,
                client_order_id=record.client_order_id,
                venue_client_id=record.venue_client_id,
                exchange_order_id=str(found.get("id")),
                status=found.get("status"),
                hint="placed by an earlier try (a crash or a lost response): not sent again",
            )
            return found
        request = record.request
        log.info(
            "broker.order_sent",
            broker=self.name,
            client_order_id=request.client_order_id,
            venue_client_id=record.venue_client_id,
            symbol=request.symbol,
            side=request.side,
            quantity=request.quantity,
            order_type=request.order_type,
        )
        return self.exchange.create_order(
            request.symbol,
            request.order_type,
            request.side,
            request.quantity,
            request.limit_price if request.order_type == "limit" else None,
            {"clientOrderId": record.venue_client_id},
        )

    def _adopt(
        self, record: OrderRecord, placed: dict[str, Any], reason: str | None = None
    ) -> list[EventPayload]:
        """Record an order the exchange holds and report it: accepted (``reason`` on that
        update only), then its fills and whatever status it has reached."""
        record.exchange_order_id = str(placed["id"])
        record.placed_ms = placed.get("timestamp")
        self._check_same_order(record, placed)
        self._remember(record)
        out: list[EventPayload] = [record.as_update(reason)]
        out += self._absorb(record, placed, placed.get("trades") or [])
        return out

    def _check_same_order(self, record: OrderRecord, placed: dict[str, Any]) -> None:
        request = record.request
        amount, side = placed.get("amount"), placed.get("side")
        if (side is not None and side != request.side) or (
            amount is not None and abs(float(amount) - request.quantity) > 1e-9 * request.quantity
        ):
            log.error(
                "broker.order_mismatch",
                broker=self.name,
                client_order_id=request.client_order_id,
                requested=f"{request.side} {request.quantity} {request.symbol}",
                at_exchange=f"{side} {amount} {placed.get('symbol')}",
                hint="the venue client id names a different order: check the exchange",
            )

    def _refuse(self, record: OrderRecord, reason: str) -> OrderUpdate:
        """Record ``record``'s order as rejected without it reaching the exchange."""
        self._remember(record)
        log.info(
            "broker.order_rejected",
            broker=self.name,
            client_order_id=record.client_order_id,
            symbol=record.symbol,
            reason=reason,
        )
        return record.finish("rejected", reason)

    def _remember(self, record: OrderRecord) -> None:
        self._orders[record.client_order_id] = record

    def _forget_old_orders(self) -> None:
        """Forget the oldest terminal orders beyond ``orders_kept`` (open ones stay)."""
        terminal = [cid for cid, r in self._orders.items() if r.terminal_sent]
        for client_order_id in terminal[: max(0, len(terminal) - self.settings.orders_kept)]:
            del self._orders[client_order_id]

    def _duplicate(self, order: OrderRequest, known: OrderRecord) -> OrderUpdate:
        same = order == known.request
        (log.info if same else log.warning)(
            "broker.duplicate_submit",
            broker=self.name,
            client_order_id=order.client_order_id,
            status=known.status,
            outcome_unknown=known.outcome_unknown,
            filled_quantity=known.filled_quantity,
            differs_from_original=not same,
        )
        reason = DUPLICATE_SUBMIT if known.reason is None else f"{DUPLICATE_SUBMIT}; {known.reason}"
        return known.as_update(reason)

    # -- following orders ------------------------------------------------------------------
    def _working(self) -> list[OrderRecord]:
        return [record for record in self._orders.values() if not record.terminal_sent]

    def _poll(self) -> list[EventPayload]:
        """Follow every working order, oldest first: settle the unknown ones, refresh the
        others. An exchange that cannot be reached ends the poll without raising: what was
        learned before is kept and returned, the order it failed on is left as it was."""
        working = self._working()
        if not working:
            return []
        with self._transaction():
            out: list[EventPayload] = []
            failure: BrokerError | None = None
            for done, record in enumerate(working):
                try:
                    with self._undo_on_error(record):
                        if record.outcome_unknown:
                            out += self._resolve(record)
                        else:
                            out += self._refresh(record)
                except BrokerError as error:
                    failure = error
                    log.warning(
                        "broker.poll_failed",
                        broker=self.name,
                        client_order_id=record.client_order_id,
                        error=_text(error),
                        orders_polled=done,
                        orders_left=len(working) - done,
                        events=len(out),
                        hint="the orders left are polled again on the next bar",
                    )
                    break
            self._log_still_unknown(failure)
            return out

    def _resolve(self, record: OrderRecord) -> list[EventPayload]:
        """Settle an order whose outcome is unknown by looking it up at the exchange (see the
        module docstring); nothing while the lookup cannot tell. Raises BrokerError when the
        exchange cannot be reached."""
        request = record.request
        if request.symbol not in self._reads.markets():  # never sendable: never placed
            record.unknown_since_ms = record.absent_reason = record.cancel_pending = None
            return [
                self._refuse(
                    record,
                    f"not placed: unknown symbol {request.symbol}: {self.exchange.id} lists "
                    "no such market",
                )
            ]
        found = self._reads.lookup(record)
        unknown_for_s = self._unknown_for_s(record)
        if found is None:
            if unknown_for_s < self.settings.unplaced_after_s:
                return []  # a create sent that recently may still land: look again later
            reason = record.absent_reason or "not placed"
            record.unknown_since_ms = record.absent_reason = record.cancel_pending = None
            log.warning(
                "broker.outcome_not_placed",
                broker=self.name,
                client_order_id=request.client_order_id,
                venue_client_id=record.venue_client_id,
                unknown_for_s=round(unknown_for_s, 3),
                reason=reason,
                hint="not sent again: the rebalancer plans again at its next rebalance",
            )
            return [record.finish("rejected", reason)]
        cancel_reason = record.cancel_pending
        record.unknown_since_ms = record.absent_reason = record.cancel_pending = None
        record.reason = None
        log.warning(
            "broker.outcome_found",
            broker=self.name,
            client_order_id=request.client_order_id,
            venue_client_id=record.venue_client_id,
            exchange_order_id=str(found.get("id")),
            status=found.get("status"),
            unknown_for_s=round(unknown_for_s, 3),
            cancel_pending=cancel_reason,
        )
        out = self._adopt(record, found, "found at the exchange after its outcome was unknown")
        if cancel_reason is not None and not record.terminal_sent:
            out += self._cancel(record, cancel_reason)  # asked for while it was unknown
        return out

    def _log_still_unknown(self, failure: BrokerError | None) -> None:
        """One line for every order whose outcome is still unknown after a poll."""
        unknown = [r for r in self._orders.values() if r.outcome_unknown]
        if not unknown:
            return
        log.warning(
            "broker.outcome_still_unknown",
            broker=self.name,
            client_order_ids=[r.client_order_id for r in unknown],
            unknown_for_s=round(max(self._unknown_for_s(r) for r in unknown), 3),
            why="the exchange is unreachable"
            if failure is not None
            else f"not at the exchange yet; a create may land up to "
            f"{self.settings.unplaced_after_s:g} s after it was sent",
            error=None if failure is None else _text(failure),
        )

    def _unknown_for_s(self, record: OrderRecord) -> float:
        since = record.unknown_since_ms
        return 0.0 if since is None else max(0.0, (self._now_ms() - since) / 1000)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _refresh(self, record: OrderRecord, reported: float | None = None) -> list[EventPayload]:
        """Fetch ``record``'s order and report what changed since ``reported`` was filled
        (None: since now)."""
        order = self._reads.order(record)
        if order is None:
            log.error(
                "broker.order_vanished",
                broker=self.name,
                client_order_id=record.client_order_id,
                exchange_order_id=record.exchange_order_id,
            )
            return [record.finish("expired", "the exchange no longer knows this order")]
        return self._absorb(record, order, [], reported=reported)

    def _cancel(self, record: OrderRecord, reason: str) -> list[EventPayload]:
        result = self._reads.cancel(record)
        if result is None or terminal_status(result) is None:  # it ended first: learn how
            result = self._reads.order(record)
            if result is None:
                return [record.finish("cancelled", reason)]
        log.info(
            "broker.order_cancelled",
            broker=self.name,
            client_order_id=record.client_order_id,
            exchange_status=result.get("status"),
            filled=result.get("filled"),
        )
        return self._absorb(record, result, [], cancel_reason=reason)

    def _absorb(
        self,
        record: OrderRecord,
        order: dict[str, Any],
        trades: list[dict[str, Any]],
        *,
        cancel_reason: str | None = None,
        reported: float | None = None,
    ) -> list[EventPayload]:
        """Report what ``order`` (a ccxt order dict of ``record``) shows that is new: a Fill
        per trade not reported before, then a partial or terminal update. A terminal status
        waits until every trade behind the exchange's filled amount has been reported."""
        before = record.filled_quantity if reported is None else reported
        fallback_ms = int(
            order.get("lastTradeTimestamp") or order.get("timestamp") or self._now_ms()
        )
        out: list[EventPayload] = self._book(record, trades, fallback_ms)
        exchange_filled = float(order.get("filled") or 0.0)
        if not record.fully_reported(exchange_filled):
            out += self._book(record, self._reads.order_trades(record), fallback_ms)
        status = terminal_status(order)
        if cancel_reason is not None:
            record.reason = cancel_reason  # kept for a terminal update that must wait
        if status is not None and record.fully_reported(exchange_filled):
            reason = record.reason if status == "cancelled" else None
            out.append(record.finish(status, reason))
        elif record.filled_quantity > before:
            out.append(record.progress())
        if status is not None and not record.terminal_sent:
            log.warning(
                "broker.trades_pending",
                broker=self.name,
                client_order_id=record.client_order_id,
                exchange_filled=exchange_filled,
                reported=record.filled_quantity,
                hint="the terminal update waits for the exchange's trade list",
            )
        return out

    def _book(
        self, record: OrderRecord, trades: list[dict[str, Any]], fallback_ms: int
    ) -> list[EventPayload]:
        fills: list[EventPayload] = []
        for trade in trades:
            order_id = trade.get("order")
            if order_id is not None and str(order_id) != record.exchange_order_id:
                continue
            fill = record.book(trade, fallback_ms)
            if fill is not None:
                fills.append(fill)
                trade_ms = int(fill.executed_at.timestamp() * 1000)
                self._last_fill_ms = max(self._last_fill_ms or 0, trade_ms)
        return fills

    def _scan_missed_trades(self, working: list[OrderRecord]) -> list[EventPayload]:
        """Book the trades of the working orders made since the last fill reported."""
        starts = [r.placed_ms for r in working if r.placed_ms is not None]
        since = self._last_fill_ms if self._last_fill_ms is not None else min(starts, default=0)
        by_exchange_id = {(r.symbol, r.exchange_order_id): r for r in working}
        out: list[EventPayload] = []
        for symbol in dict.fromkeys(r.symbol for r in working):
            for trade in self._reads.trades_since(symbol, since):
                record = by_exchange_id.get((symbol, str(trade.get("order"))))
                if record is not None:
                    out += self._book(record, [trade], int(trade["timestamp"]))
        return out

    def _by_exchange_id(self) -> dict[tuple[str, str], OrderRecord]:
        return {
            (r.symbol, r.exchange_order_id): r
            for r in self._orders.values()
            if r.exchange_order_id is not None
        }


def _text(error: BaseException) -> str:
    """An error's message with any registered secret masked (BrokerError texts are masked
    when built; this keeps any other text that reaches an update's reason masked as well)."""
    return mask_secrets(str(error))
