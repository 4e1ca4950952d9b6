"""Rebalance service: on each RebalanceDue, turns the decision bar's signal into long-only
target weights and the orders that reach them; keeps the portfolio view from fills.

Decisions are pinned to ``RebalanceDue.decision_time``: the service waits until it holds that
bar and its signal, whatever order the streams deliver them in, and never uses a later bar.
One rebalance at a time: the next waits until every order of the last has ended.

Every bar is marked: a BarSet gives a PortfolioSnapshot; a BarBlock, sent only while nothing is
in flight, gives PortfolioMarks for its bars but the last and a PortfolioSnapshot for the last.

Every input may come twice (the bus delivers at least once, and a handler run again publishes
under new event ids), so each effect is keyed by its business id:

- a ``rebalance_id`` runs once. A schedule's ids are time-sortable (``rb-{schedule}-{due}``),
  so the service keeps, per schedule, the latest ``due`` it has run or skipped and acknowledges
  any tick at or before it with no orders (``rebalance.already_done``): O(schedules) memory, and
  a late tick can never trade after a newer decision. A tick whose id is already waiting is
  dropped (``rebalance.duplicate_tick``).
- a fill is booked once by ``fill_id`` (PortfolioBook), and only a booked fill counts towards
  its order's filled quantity.
- an order's first terminal update counts; a repeat, or one for an order not open, is ignored.

State: everything above (the book, open orders, waiting ticks with their corr, the latest
``due`` per schedule, recent bars and signals, the last bar) is committed with the
acknowledgement of each message (``snapshot_state``, a msgpack ``RebalanceState``), so a
restarted rebalancer resumes exactly where its last commit left it and handles again only what
that commit did not cover. ``halted`` is not part of it: a halt is a Control message of the run
that sent it (the end of a replay, an operator's stop), and a resumed paper run trades again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

import msgspec
import numpy as np
import structlog

from engine.bus import Bus
from engine.clock import Clock
from engine.config import PortfolioConfig
from engine.events import (
    BarBlock,
    BarSet,
    Control,
    Envelope,
    EventPayload,
    Fill,
    OrderRequest,
    OrderUpdate,
    RebalanceDue,
    Signal,
    TargetPortfolio,
)
from engine.events.base import UtcDatetime
from services.portfolio import BookState, PortfolioBook
from services.runtime import Handler, Service, decode_state, encode_state
from strategies.weighting import top_fraction_weights

log = structlog.get_logger("services.rebalance")
_KEPT = 16  # recent bars and signals kept to match late ticks against
_UNMATCHED_KEPT = 4096  # orders whose fills came while the order was not open
STATE_VERSION = 1


class _BarState(msgspec.Struct, frozen=True, array_like=True):
    close_time: UtcDatetime
    universe: int  # index into RebalanceState.universes
    close: tuple[float, ...]


class _SignalState(msgspec.Struct, frozen=True, array_like=True):
    asof: UtcDatetime
    model: str
    factor_weights: dict[str, float]
    universe: int
    scores: tuple[float | None, ...]
    fallback: bool


class RebalanceState(msgspec.Struct, frozen=True, kw_only=True):
    """The rebalancer's committed state (``halted`` excluded, see the module docstring).

    Symbol lists shared by bars and signals are stored once, in ``universes``, and referred to
    by position: 32 kept bars and signals of a 500-symbol universe would otherwise repeat it.
    """

    version: int
    book: BookState
    open_orders: dict[str, tuple[float, float | None]]  # quantity filled, terminal quantity
    waiting: list[tuple[RebalanceDue, str]]  # ticks waiting to run, with their corr
    last_due: dict[str, UtcDatetime]
    unmatched_fills: dict[str, float]
    universes: list[tuple[str, ...]]
    bars: list[_BarState]
    signals: list[_SignalState]
    last_bar_time: UtcDatetime | None
    last_universe: int | None  # of the last bar: the book is marked with its closes


class _Universes:
    """Numbers distinct symbol tuples for a snapshot (by identity first: kept bars share one)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, ...]] = []
        self._by_id: dict[int, int] = {}
        self._by_value: dict[tuple[str, ...], int] = {}

    def number(self, symbols: tuple[str, ...]) -> int:
        found = self._by_id.get(id(symbols))
        if found is None:
            found = self._by_value.get(symbols)
            if found is None:
                found = self._by_value[symbols] = len(self.items)
                self.items.append(symbols)
            self._by_id[id(symbols)] = found
        return found


@dataclass
class _OpenOrder:
    quantity_filled: float = 0.0
    terminal_quantity: float | None = None


@dataclass(frozen=True)
class _Bar:
    symbols: tuple[str, ...]
    index: dict[str, int]
    close: tuple[float, ...]


class RebalanceService(Service):
    """Holds the portfolio view and turns rebalance ticks into orders."""

    name = "rebalance"
    commit_each_message = True  # its handlers publish orders or trade: no batch replay

    def __init__(self, bus: Bus, clock: Clock, portfolio: PortfolioConfig) -> None:
        self.config = portfolio
        self.book = PortfolioBook(cash=portfolio.initial_cash)
        self.open_orders: dict[str, _OpenOrder] = {}
        self.pending: list[tuple[RebalanceDue, str]] = []
        # Per schedule, the latest ``due`` whose tick was run (or skipped): ticks at or before
        # it are done. Set once the tick's orders are published.
        self.last_due: dict[str, datetime] = {}
        # Booked fills of orders not open: an order placed again (its rebalance run again after
        # a restart lost ``last_due``) starts from them, as the broker does not send them again.
        self._unmatched_fills: OrderedDict[str, float] = OrderedDict()
        self._bars: OrderedDict[datetime, _Bar] = OrderedDict()
        self._signals: OrderedDict[datetime, Signal] = OrderedDict()
        self._last_bar_time: datetime | None = None
        self._last_symbols: tuple[str, ...] | None = None
        self._last_index: dict[str, int] = {}
        super().__init__(bus, clock)

    def handlers(self) -> dict[type[EventPayload], Handler]:
        return {
            BarSet: self.on_bars,
            BarBlock: self.on_block,
            Signal: self.on_signal,
            RebalanceDue: self.on_rebalance_due,
            Fill: self.on_fill,
            OrderUpdate: self.on_order_update,
        }

    # -- state -----------------------------------------------------------------------------
    def state(self) -> RebalanceState:
        """Return the state committed with each message (everything but ``halted``)."""
        universes = _Universes()
        last_universe = None
        if self._last_symbols is not None:
            last_universe = universes.number(self._last_symbols)
        return RebalanceState(
            version=STATE_VERSION,
            book=self.book.state(),
            open_orders={
                coid: (order.quantity_filled, order.terminal_quantity)
                for coid, order in self.open_orders.items()
            },
            waiting=list(self.pending),
            last_due=dict(self.last_due),
            unmatched_fills=dict(self._unmatched_fills),
            bars=[
                _BarState(close_time, universes.number(bar.symbols), bar.close)
                for close_time, bar in self._bars.items()
            ],
            signals=[
                _SignalState(
                    signal.asof,
                    signal.model,
                    signal.factor_weights,
                    universes.number(signal.symbols),
                    signal.scores,
                    signal.fallback,
                )
                for signal in self._signals.values()
            ],
            universes=universes.items,
            last_bar_time=self._last_bar_time,
            last_universe=last_universe,
        )

    def snapshot_state(self) -> bytes:
        return encode_state(self.state())

    def restore_state(self, blob: bytes) -> None:
        self.restore(decode_state(blob, RebalanceState, STATE_VERSION, self.name))

    def restore(self, state: RebalanceState) -> None:
        """Become the rebalancer that ``state`` was taken from (``halted`` stays as it is)."""
        universes = [tuple(symbols) for symbols in state.universes]
        indexes = [{s: i for i, s in enumerate(symbols)} for symbols in universes]
        if state.last_universe is None:
            self._last_symbols, self._last_index = None, {}
        else:
            self._last_symbols = universes[state.last_universe]
            self._last_index = indexes[state.last_universe]
        # The book is marked with the last bar's closes, through the same index object
        # (``PortfolioBook.mark`` skips work when the universe object is unchanged).
        self.book.restore(state.book, self._last_index if state.book.bar_close else {})
        self.open_orders = {
            coid: _OpenOrder(quantity_filled=filled, terminal_quantity=terminal)
            for coid, (filled, terminal) in state.open_orders.items()
        }
        self.pending = [(tick, corr) for tick, corr in state.waiting]
        self.last_due = dict(state.last_due)
        self._unmatched_fills = OrderedDict(state.unmatched_fills)
        self._bars = OrderedDict(
            (bar.close_time, _Bar(universes[bar.universe], indexes[bar.universe], bar.close))
            for bar in state.bars
        )
        self._signals = OrderedDict(
            (
                signal.asof,
                Signal(
                    asof=signal.asof,
                    model=signal.model,
                    factor_weights=signal.factor_weights,
                    symbols=universes[signal.universe],
                    scores=signal.scores,
                    fallback=signal.fallback,
                ),
            )
            for signal in state.signals
        )
        self._last_bar_time = state.last_bar_time

    def state_figures(self) -> dict[str, object]:
        return {
            "cash": round(self.book.cash, 2),
            "positions": len(self.book.positions),
            "fills_applied": self.book.fills_applied,
            "open_orders": len(self.open_orders),
            "waiting_ticks": len(self.pending),
            "last_bar": None if self._last_bar_time is None else self._last_bar_time.isoformat(),
        }

    # -- inputs ----------------------------------------------------------------------------
    def on_bars(self, event: Envelope) -> None:
        bars = event.payload
        assert isinstance(bars, BarSet)
        self._take_bars(bars, event)

    def on_block(self, event: Envelope) -> None:
        block = event.payload
        assert isinstance(block, BarBlock)
        if self.open_orders or self.pending:
            for bars in block.rows():  # something in flight: bar by bar, as it was sent for
                self._take_bars(bars, event)
            return
        close = block.matrix("close")
        assert close is not None
        rows = np.flatnonzero(~np.isnan(close).all(axis=1))
        if len(rows) == 0:
            return
        times = block.close_times()
        close = close[rows]
        asof = [times[i] for i in rows.tolist()]
        # The last bar is the one a tick can decide on: the producer ends a block at a tick.
        last = asof[-1]
        present = np.flatnonzero(~np.isnan(close[-1]))
        symbols = tuple(block.symbols[j] for j in present.tolist())
        if symbols != self._last_symbols:
            self._last_index = {s: i for i, s in enumerate(symbols)}
            self._last_symbols = symbols
        closes = tuple(close[-1, present].tolist())
        marks = self.book.mark_rows(asof, block.symbols, close, self._last_index, closes)
        self._remember(self._bars, last, _Bar(self._last_symbols, self._last_index, closes))
        self._last_bar_time = last
        snapshot = self.book.snapshot(last)
        self.emit([snapshot] if marks is None else [marks, snapshot], corr=event.corr, ts=event.ts)
        self._try_pending()

    def _take_bars(self, bars: BarSet, event: Envelope) -> None:
        if bars.symbols is not self._last_symbols and bars.symbols != self._last_symbols:
            self._last_index = {s: i for i, s in enumerate(bars.symbols)}
            self._last_symbols = bars.symbols
        close_time = bars.close_time
        # Its universe as kept (equal to the bar's): kept bars then share one tuple.
        symbols = self._last_symbols
        self._remember(self._bars, close_time, _Bar(symbols, self._last_index, bars.close))
        self._last_bar_time = close_time
        self.book.mark(self._last_index, bars.close)
        self.emit([self.book.snapshot(close_time)], corr=event.corr, ts=event.ts)
        self._try_pending()

    def on_signal(self, event: Envelope) -> None:
        signal = event.payload
        assert isinstance(signal, Signal)
        self._remember(self._signals, signal.asof, signal)
        self._try_pending()

    def on_rebalance_due(self, event: Envelope) -> None:
        tick = event.payload
        assert isinstance(tick, RebalanceDue)
        if self._already_done(tick):
            return
        if any(waiting.rebalance_id == tick.rebalance_id for waiting, _ in self.pending):
            log.info(
                "rebalance.duplicate_tick",
                rebalance_id=tick.rebalance_id,
                reason="this rebalance is already waiting to run",
            )
        else:
            self.pending.append((tick, event.corr))
        self._try_pending()  # also for a duplicate: it may be this tick's handler run again

    def on_fill(self, event: Envelope) -> None:
        fill = event.payload
        assert isinstance(fill, Fill)
        if not self.book.apply_fill(fill):
            # Booked and counted already (the book logs it). Only see whether its order can
            # close: a handler that raised after booking it may not have got that far.
            if fill.client_order_id in self.open_orders:
                self._close_if_done(fill.client_order_id, event)
            return
        order = self.open_orders.get(fill.client_order_id)
        if order is None:
            unmatched = self._unmatched_fills
            unmatched[fill.client_order_id] = (
                unmatched.get(fill.client_order_id, 0.0) + fill.quantity
            )
            while len(unmatched) > _UNMATCHED_KEPT:
                unmatched.popitem(last=False)
            return
        order.quantity_filled += fill.quantity
        self._close_if_done(fill.client_order_id, event)

    def on_order_update(self, event: Envelope) -> None:
        update = event.payload
        assert isinstance(update, OrderUpdate)
        if not update.is_terminal:
            return
        order = self.open_orders.get(update.client_order_id)
        if order is None:
            # Closed already (a repeated terminal update, or the broker's answer to a
            # duplicate submit), or never ours: nothing left to count.
            log.debug(
                "order.update_ignored",
                client_order_id=update.client_order_id,
                status=update.status,
                reason="order not open",
            )
            return
        if order.terminal_quantity is not None:
            # A repeat of the terminal update while the fills are still on their way.
            if abs(update.filled_quantity - order.terminal_quantity) > 1e-9 * max(
                1.0, order.terminal_quantity
            ):
                log.warning(
                    "order.conflicting_terminal_update",
                    client_order_id=update.client_order_id,
                    status=update.status,
                    filled_quantity=update.filled_quantity,
                    kept_filled_quantity=order.terminal_quantity,
                )
            self._close_if_done(update.client_order_id, event)  # as for a duplicate fill
            return
        if update.status == "rejected":
            log.warning(
                "order.rejected", client_order_id=update.client_order_id, reason=update.reason
            )
        order.terminal_quantity = update.filled_quantity
        self._close_if_done(update.client_order_id, event)

    def on_control(self, control: Control, event: Envelope) -> None:
        if control.command == "halt" and self.pending:
            log.warning(
                "rebalance.dropped_on_halt",
                count=len(self.pending),
                rebalance_ids=[tick.rebalance_id for tick, _ in self.pending],
            )
            self.pending.clear()

    # -- decisions -------------------------------------------------------------------------
    def _already_done(self, tick: RebalanceDue) -> bool:
        """Return True, logging it, when ``tick``'s schedule has run a tick due at or after it."""
        last = self.last_due.get(tick.schedule)
        if last is None or tick.due > last:
            return False
        log.info(
            "rebalance.already_done",
            rebalance_id=tick.rebalance_id,
            due=tick.due.isoformat(),
            last_due=last.isoformat(),
            reason="this schedule already ran a rebalance due at or after this one",
        )
        return True

    def _done(self, tick: RebalanceDue) -> None:
        last = self.last_due.get(tick.schedule)
        if last is None or tick.due > last:
            self.last_due[tick.schedule] = tick.due

    @staticmethod
    def _remember(store: OrderedDict, key: datetime, value: object) -> None:
        store[key] = value
        while len(store) > _KEPT:
            store.popitem(last=False)

    def _close_if_done(self, client_order_id: str, event: Envelope) -> None:
        # An order is over when its terminal update came AND its fills add up to it:
        # the two travel on different streams and may arrive in either order.
        order = self.open_orders[client_order_id]
        if order.terminal_quantity is None:
            return
        if (
            order.quantity_filled + 1e-9 * max(1.0, order.terminal_quantity)
            < order.terminal_quantity
        ):
            return
        last = len(self.open_orders) == 1
        if last:
            # The post-trade snapshot goes out before the order leaves the table: should this
            # raise, the handler run again (the fill or update is then a duplicate) gets here.
            assert self._last_bar_time is not None
            self.emit([self.book.snapshot(self._last_bar_time)], corr=event.corr, ts=event.ts)
        del self.open_orders[client_order_id]
        if last:
            self._try_pending()

    def _try_pending(self) -> None:
        while self.pending and not self.open_orders and not self.halted:
            tick, corr = self.pending[0]
            if self._already_done(tick):  # a later tick of its schedule ran while it waited
                self.pending.pop(0)
                continue
            bar = self._bars.get(tick.decision_time)
            signal = self._signals.get(tick.decision_time)
            if bar is None or signal is None:
                # Each stream arrives in order: once a later item came, the missing one never will.
                bar_lost = (
                    bar is None and (self._last_bar_time or tick.decision_time) > tick.decision_time
                )
                signal_lost = (
                    signal is None
                    and max(self._signals, default=tick.decision_time) > tick.decision_time
                )
                if not (bar_lost or signal_lost):
                    return  # the decision bar or its signal is still on its way
                self.pending.pop(0)
                self._done(tick)
                log.warning(
                    "rebalance.skipped",
                    rebalance_id=tick.rebalance_id,
                    decision_time=tick.decision_time.isoformat(),
                    reason="no bar or signal for the decision time",
                )
                continue
            self._rebalance(tick, corr, bar, signal)
            # Only once it ran: a handler that raises leaves the tick waiting, to run again.
            self.pending.pop(0)
            # Ticks of its schedule due at or before it are done now: drop them at once, so
            # that nothing looks waiting while its orders are out.
            self.pending[:] = [(t, c) for t, c in self.pending if not self._already_done(t)]

    def _log_nothing_selected(self, tick: RebalanceDue, scores: np.ndarray) -> None:
        # Holding nothing must say why: still warming up is normal, a universe too small for
        # top_fraction is not.
        scored = int(np.count_nonzero(~np.isnan(scores)))
        fields = {
            "rebalance_id": tick.rebalance_id,
            "decision_time": tick.decision_time.isoformat(),
            "scored_assets": scored,
            "top_fraction": self.config.top_fraction,
        }
        if scored == 0:
            log.info(
                "rebalance.nothing_selected",
                reason="no asset has a score yet (factor lookbacks still filling, or no bar)",
                **fields,
            )
        else:
            log.warning(
                "rebalance.nothing_selected",
                reason=f"top_fraction {self.config.top_fraction} of {scored} scored assets "
                "rounds down to 0",
                **fields,
            )

    def _rebalance(self, tick: RebalanceDue, corr: str, bar: _Bar, signal: Signal) -> None:
        scores = np.array(signal.scores, dtype=float)
        priced = np.array([s in bar.index for s in signal.symbols])
        scores[~priced] = np.nan  # no bar now: cannot be bought at a known price
        weights = top_fraction_weights(scores, self.config.top_fraction, self.config.gross_exposure)
        if not weights.any():
            self._log_nothing_selected(tick, scores)
        prices = {s: bar.close[bar.index[s]] for s in signal.symbols if s in bar.index}
        for symbol in self.book.positions:
            if symbol not in prices and symbol in bar.index:
                prices[symbol] = bar.close[bar.index[symbol]]
        # Value the account at the decision bar, the prices the orders are sized with.
        equity = self.book.cash + sum(
            q * prices.get(s, self.book.price(s)) for s, q in self.book.positions.items()
        )
        targets = {
            s: w * equity / prices[s] for s, w in zip(signal.symbols, weights.tolist()) if w > 0
        }
        orders: list[tuple[float, OrderRequest]] = []
        for symbol in sorted(set(targets) | set(self.book.positions)):
            price = prices.get(symbol)
            if price is None:
                continue  # held but not trading now: nothing can be done at a known price
            delta = targets.get(symbol, 0.0) - self.book.positions.get(symbol, 0.0)
            if abs(delta) * price <= max(self.config.min_order_notional, 1e-9 * equity):
                continue
            # Order value relative to equity, rounded so that float noise cannot reorder equal
            # buys (a new holding's value is weight x equity whatever its price).
            orders.append(
                (
                    round(delta * price / equity, 9),
                    OrderRequest(
                        client_order_id=f"{tick.rebalance_id}-{symbol}",
                        rebalance_id=tick.rebalance_id,
                        asof=tick.decision_time,
                        symbol=symbol,
                        side="buy" if delta > 0 else "sell",
                        quantity=abs(delta),
                        reference_price=price,
                    ),
                )
            )
        # Sells first, then buys from the smallest: cash is freed before it is spent. The sort
        # is stable, so equal values go by symbol: the same orders whatever order the symbols
        # first arrived in (vectorbt's call_seq="auto" keeps column order, alphabetical here).
        orders.sort(key=lambda item: item[0])
        requests = [request for _, request in orders]
        target = TargetPortfolio(
            rebalance_id=tick.rebalance_id,
            asof=tick.decision_time,
            symbols=signal.symbols,
            weights=tuple(weights.tolist()),
            cash_weight=max(0.0, 1.0 - float(weights.sum())),
        )
        self.emit([target, *requests], corr=corr, ts=self.clock.now())
        # Recorded once published: nothing above changes state, so a raise before here leaves
        # the tick to run again from scratch. The answers cannot come before this handler ends.
        self._done(tick)
        for request in requests:
            booked = self._unmatched_fills.pop(request.client_order_id, 0.0)
            self.open_orders[request.client_order_id] = _OpenOrder(quantity_filled=booked)
        log.info(
            "rebalance.done",
            rebalance_id=tick.rebalance_id,
            decision_time=tick.decision_time.isoformat(),
            model=signal.model,
            fallback=signal.fallback,
            equity=round(equity, 2),
            holdings=len(targets),
            n_orders=len(requests),
            turnover=round(sum(abs(v) for v, _ in orders), 4),
        )
