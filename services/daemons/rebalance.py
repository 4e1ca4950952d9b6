"""Rebalance service: on each RebalanceDue, turns the decision bar's signal into target
weights (services/daemons/targets.py: the optimiser or a simple scheme, then the risk limits)
and the orders that reach them (services/daemons/order_plan.py: lots, minimum notional, pre-trade
checks); keeps the portfolio view from fills, and the drawdown stop and the kill switch.

Risk acts between rebalances too: a bar on which the drawdown reaches the stop queues a risk
cut (a tick of schedule ``drawdown-stop``, id ``dd-{bar}``); with ``[risk] var_check =
"every-bar"``, a bar on which the book's VaR goes above the limit by more than its band queues
a cut back onto the limit (``var-stop``, ``var-{bar}``); an operator's ``halt --flatten``
queues a flatten (``kill-switch``, ``halt-{time}``); all run ahead of scheduled ticks,
with reduce-only orders, through the same once-only machinery as a scheduled rebalance. Every
limit that acts is logged with its numbers and published as a RiskAlert.

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
that commit did not cover. The risk state (drawdown stop, kill switch, trailing realised
returns) is part of it; the trailing closes are not (``PriceWindow``, rebuilt on start from
the bars the group consumed). A run's ``halted`` is not either: the end of a replay halts the
run that sent it, and a resumed paper run trades again; an operator's halt (the kill switch)
is kept until an operator's resume.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import numpy as np
import structlog

from engine.bus import Bus
from engine.clock import Clock
from engine.config import PortfolioConfig, RiskConfig
from engine.data.fill import carry_forward
from engine.events import (
    BarBlock,
    BarSet,
    Control,
    Envelope,
    EventPayload,
    Fill,
    OrderRequest,
    OrderUpdate,
    PortfolioSnapshot,
    RebalanceDue,
    RiskAlert,
    Signal,
    TargetPortfolio,
)
from engine.events.base import UtcDatetime
from engine.portfolio.lots import LotRules
from engine.risk.limits import Action, DrawdownState, figures, on_equity, reentry
from engine.risk.measures import value_at_risk
from engine.risk.pretrade import stale_data_reason
from engine.timeframes import timeframe_delta
from services.daemons.order_plan import plan_orders
from services.daemons.portfolio import BookState, PortfolioBook
from services.daemons.price_window import PriceWindow
from services.daemons.targets import MIN_HISTORY, TargetBuilder
from services.runtime.loop import Handler, Service, decode_state, encode_state

log = structlog.get_logger("services.daemons.rebalance")
_KEPT = 16  # recent bars and signals kept to match late ticks against
_UNMATCHED_KEPT = 4096  # orders whose fills came while the order was not open
STATE_VERSION = 2
DRAWDOWN_SCHEDULE = "drawdown-stop"
KILL_SWITCH_SCHEDULE = "kill-switch"
VAR_SCHEDULE = "var-stop"
RISK_SCHEDULES = frozenset({DRAWDOWN_SCHEDULE, KILL_SWITCH_SCHEDULE, VAR_SCHEDULE})
# The block path's test for a VaR stop errs this far on the side of sending bars one by one,
# so that float differences between the two ways of measuring never hide a stop.
_VAR_STOP_MARGIN = 0.98
_DEFAULT_PERIODS_PER_YEAR = 252.0


class KillSwitch(msgspec.Struct, frozen=True, kw_only=True):
    """An operator's halt: no new orders until an operator's resume (restarts included)."""

    since: UtcDatetime
    reason: str
    flatten: bool


class RiskState(msgspec.Struct, frozen=True, kw_only=True):
    """The rebalancer's risk book: committed with its state, so limits survive restarts."""

    drawdown: DrawdownState = DrawdownState()
    kill_switch: KillSwitch | None = None
    realised_returns: list[float] = []  # the account's last [risk] var_window bar returns
    last_equity: float | None = None
    # Of the last target, after the limits; with var_check "every-bar", of the book each bar.
    expected_var: float | None = None
    bar_seconds: float = 0.0
    acted: dict[str, int] = {}  # RiskAlerts published, per kind


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
    risk: RiskState = RiskState()


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

    def __init__(
        self,
        bus: Bus,
        clock: Clock,
        portfolio: PortfolioConfig,
        risk: RiskConfig | None = None,
        lot_rules: dict[str, LotRules] | None = None,
        default_lot: LotRules | None = None,
        fee_rate: float = 0.0,
    ) -> None:
        self.config = portfolio
        self.fee_rate = fee_rate  # the broker's taker fee: buys are sized to pay it
        self.risk_config = risk or RiskConfig()
        self.lot_rules = lot_rules or {}
        self.default_lot = default_lot or LotRules()
        self.targets = TargetBuilder(portfolio, self.risk_config)
        self.risk = RiskState()
        self._realised: deque[float] = deque(maxlen=self.risk_config.var_window)
        history = max(
            portfolio.covariance_window,
            self.risk_config.var_window,
            self.risk_config.reentry_trend_bars,
        )
        self.window = PriceWindow(history + 1)
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
            risk=msgspec.structs.replace(self.risk, realised_returns=list(self._realised)),
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
        self.risk = state.risk
        self._realised = deque(state.risk.realised_returns, maxlen=self.risk_config.var_window)

    def start(self) -> None:
        """Load the construction's libraries (``TargetBuilder.prepare``) and rebuild the
        trailing closes from the bars this group consumed before a restart."""
        self.targets.prepare()
        history = self.bus.consumed_history(self.name, BarSet.TOPIC, self.window.size)
        for event in history:
            self._window_add(event.payload)
        if history:
            log.info("rebalance.window_rebuilt", bars=len(self.window))

    def _window_add(self, payload: EventPayload) -> None:
        if isinstance(payload, BarSet):
            self.window.add(payload.close_time, payload.symbols, np.array(payload.close))
            self._bar_seconds(payload.timeframe)
        elif isinstance(payload, BarBlock):
            close = payload.matrix("close")
            assert close is not None
            for time_, row in zip(payload.close_times(), close):
                self.window.add(time_, payload.symbols, row)
            self._bar_seconds(payload.timeframe)

    def _bar_seconds(self, timeframe: str) -> None:
        if not self.risk.bar_seconds:
            seconds = timeframe_delta(timeframe).total_seconds()
            self.risk = msgspec.structs.replace(self.risk, bar_seconds=seconds)

    def state_figures(self) -> dict[str, object]:
        return {
            "cash": round(self.book.cash, 2),
            "positions": len(self.book.positions),
            "fills_applied": self.book.fills_applied,
            "open_orders": len(self.open_orders),
            "waiting_ticks": len(self.pending),
            "last_bar": None if self._last_bar_time is None else self._last_bar_time.isoformat(),
            "drawdown_stopped": self.risk.drawdown.stopped,
            "kill_switch": self.risk.kill_switch is not None,
        }

    # -- inputs ----------------------------------------------------------------------------
    def on_bars(self, event: Envelope) -> None:
        bars = event.payload
        assert isinstance(bars, BarSet)
        self._take_bars(bars, event)

    def on_block(self, event: Envelope) -> None:
        block = event.payload
        assert isinstance(block, BarBlock)
        close = block.matrix("close")
        assert close is not None
        if self.open_orders or self.pending or self.stop_possible(block.symbols, close):
            self.handle_rows(event)  # bar by bar, as it was sent for
            return
        rows = np.flatnonzero(~np.isnan(close).all(axis=1))
        if len(rows) == 0:
            return
        self._bar_seconds(block.timeframe)
        times = block.close_times()
        close = close[rows]
        asof = [times[i] for i in rows.tolist()]
        for time_, row in zip(asof, close):
            self.window.add(time_, block.symbols, row)
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
        equities = [] if marks is None else list(marks.equity)
        for time_, equity in zip(asof, [*equities, snapshot.equity]):
            # No stop can act on these bars (stop_possible said so); the book's VaR is that of
            # the last bar, where the book's prices are.
            self._on_equity(equity, time_, event.corr, watch_var=time_ == last)
        snapshot = self._with_risk(snapshot)
        self.emit([snapshot] if marks is None else [marks, snapshot], corr=event.corr, ts=event.ts)
        self._try_pending()

    def stop_possible(self, symbols: Sequence[str], close: np.ndarray) -> bool:
        """Whether the drawdown stop, or the VaR stop, could trigger on one of the bars of
        ``close`` (bars x ``symbols``, NaN: no bar). A backtest then sends those bars one by
        one, so that the stop's orders go out on the bar it happens and fill on the next, as in
        a paper run (should a block come anyway, it is taken bar by bar here, which keeps the
        decision right but not the fill's timing)."""
        config = self.risk_config
        state = self.risk.drawdown
        if not config.enabled or state.stopped or not self.book.positions:
            return False
        close = close[~np.isnan(close).all(axis=1)]  # the window skips bars without a close
        if len(close) == 0:
            return False
        column = {s: j for j, s in enumerate(symbols)}
        held = tuple(sorted(self.book.positions))
        start = np.array([self.book.price(s) for s in held])
        prices = np.repeat(start[None, :], len(close), axis=0)
        traded = [k for k, s in enumerate(held) if s in column]
        if traded:
            prices[:, traded] = carry_forward(
                close[:, [column[held[k]] for k in traded]], start[traded]
            )
        quantities = np.array([self.book.positions[s] for s in held])
        equity = self.book.cash + prices @ quantities
        if config.drawdown_stop > 0:
            peak = np.maximum.accumulate(np.concatenate([[state.peak], equity]))[1:]
            with np.errstate(divide="ignore", invalid="ignore"):
                drawdown = np.where(peak > 0, 1.0 - equity / peak, 0.0)
            if np.any(drawdown >= config.drawdown_stop - 1e-12):
                return True
        if not self._watching_var():
            return False
        # The VaR stop: each bar's book over the returns up to that bar, as _book_var takes it.
        raw = np.full((len(close), len(held)), np.nan)
        for k in traded:
            raw[:, k] = close[:, column[held[k]]]
        window = config.var_window
        history = self.window.closes(held, window + 1)
        closes = np.vstack([history, raw])
        with np.errstate(divide="ignore", invalid="ignore"):
            returns = closes[1:] / closes[:-1] - 1.0
        threshold = config.var_limit * (1.0 + config.var_stop_band) * _VAR_STOP_MARGIN
        periods = self.window.periods_per_year(_DEFAULT_PERIODS_PER_YEAR)
        for i in range(len(close)):
            if equity[i] <= 0:
                return True
            end = len(history) - 1 + i + 1
            rows = returns[max(0, end - window) : end]
            weights = quantities * prices[i] / equity[i]
            value = figures(rows, weights, config, periods).var
            if value is not None and value > threshold:
                return True
        return False

    def _take_bars(self, bars: BarSet, event: Envelope) -> None:
        if bars.symbols is not self._last_symbols and bars.symbols != self._last_symbols:
            self._last_index = {s: i for i, s in enumerate(bars.symbols)}
            self._last_symbols = bars.symbols
        close_time = bars.close_time
        new_bar = self._last_bar_time is None or close_time > self._last_bar_time
        # Its universe as kept (equal to the bar's): kept bars then share one tuple.
        symbols = self._last_symbols
        self._remember(self._bars, close_time, _Bar(symbols, self._last_index, bars.close))
        self._last_bar_time = close_time
        self.window.add(close_time, symbols, np.array(bars.close))
        self._bar_seconds(bars.timeframe)
        self.book.mark(self._last_index, bars.close)
        snapshot = self.book.snapshot(close_time)
        if new_bar:  # a bar delivered again counts once (cool-down, realised returns)
            self._on_equity(snapshot.equity, close_time, event.corr)
        if not self.open_orders:
            # With orders out, the next snapshot waits for their fills (_close_if_done): one
            # marked before the fills of this bar landed would show a book that no longer is.
            self.emit([self._with_risk(snapshot)], corr=event.corr, ts=event.ts)
        self._try_pending()

    # -- risk ------------------------------------------------------------------------------
    def _on_equity(self, equity: float, asof: datetime, corr: str, watch_var: bool = True) -> None:
        """Take one bar's equity: the realised returns, the drawdown stop (which, when it
        triggers, queues a risk cut of the book ahead of the scheduled ticks), then, with
        ``watch_var`` and ``[risk] var_check = "every-bar"``, the book's VaR (the VaR stop)."""
        risk = self.risk
        if risk.last_equity and risk.last_equity > 0:
            self._realised.append(equity / risk.last_equity - 1.0)
        drawdown, action = on_equity(risk.drawdown, equity, asof, self.risk_config)
        self.risk = msgspec.structs.replace(risk, drawdown=drawdown, last_equity=equity)
        if action is None:
            if watch_var and self._watching_var():
                self._watch_var(asof, corr)
            return
        stamp = asof.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        tick = RebalanceDue(
            rebalance_id=f"dd-{stamp}", schedule=DRAWDOWN_SCHEDULE, due=asof, decision_time=asof
        )
        self.pending.insert(0, (tick, corr))
        self._alert(action, "critical", corr, asof, tick.rebalance_id)

    def _alert(
        self,
        action: Action,
        severity: str,
        corr: str,
        asof: datetime | None = None,
        rebalance_id: str = "",
        **fields: object,
    ) -> None:
        """Publish and log one limit's action with its numbers."""
        acted = dict(self.risk.acted)
        acted[action.kind] = acted.get(action.kind, 0) + 1
        self.risk = msgspec.structs.replace(self.risk, acted=acted)
        metrics = {k: round(float(v), 6) for k, v in action.metrics.items()}
        log.warning(
            "risk.limit_acted",
            kind=action.kind,
            message=action.message,
            scale=round(action.scale, 6),
            asof=None if asof is None else asof.isoformat(),
            rebalance_id=rebalance_id,
            **metrics,
            **fields,
        )
        self.emit(
            [
                RiskAlert(
                    kind=action.kind,  # type: ignore[arg-type]
                    severity=severity,  # type: ignore[arg-type]
                    message=action.message,
                    action=f"exposure x{action.scale:.4g}",
                    metrics=metrics,
                    asof=asof,
                    rebalance_id=rebalance_id,
                )
            ],
            corr=corr,
        )

    def _with_risk(self, snapshot: PortfolioSnapshot) -> PortfolioSnapshot:
        """``snapshot`` with the risk figures: realised and expected VaR, halt and stop flags."""
        config = self.risk_config
        realised = None
        if len(self._realised) >= 20:
            realised = value_at_risk(
                np.fromiter(self._realised, float, len(self._realised)),
                config.var_confidence,
                config.var_method,
                config.var_horizon,
            )
        return msgspec.structs.replace(
            snapshot,
            realised_var=realised,
            expected_var=self.risk.expected_var,
            halted=self.risk.kill_switch is not None,
            drawdown_stopped=self.risk.drawdown.stopped,
        )

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
        if self.risk.kill_switch is not None:
            self._done(tick)
            log.warning(
                "rebalance.skipped",
                rebalance_id=tick.rebalance_id,
                decision_time=tick.decision_time.isoformat(),
                reason=f"kill switch on since {self.risk.kill_switch.since.isoformat()}",
            )
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
        if control.target not in ("*", self.name):
            return
        if control.origin == "operator":
            self._kill_switch(control, event)
        if control.command == "halt" and self.pending:
            dropped = [tick for tick, _ in self.pending if tick.schedule not in RISK_SCHEDULES]
            if control.origin != "operator":
                dropped = [tick for tick, _ in self.pending]
            if dropped:
                log.warning(
                    "rebalance.dropped_on_halt",
                    count=len(dropped),
                    rebalance_ids=[tick.rebalance_id for tick in dropped],
                )
            self.pending[:] = [(tick, corr) for tick, corr in self.pending if tick not in dropped]
        self._try_pending()

    def _kill_switch(self, control: Control, event: Envelope) -> None:
        """An operator's halt or resume: set or lift the persisted kill switch; a halt with
        ``flatten`` queues the closing of every position."""
        switch = self.risk.kill_switch
        if control.command == "resume":
            if switch is None:
                return
            self.risk = msgspec.structs.replace(self.risk, kill_switch=None)
            action = Action("kill_switch", f"trading resumed: {control.reason or 'operator'}", 1.0)
            self._alert(action, "info", event.corr, halted_since=switch.since.isoformat())
            return
        if control.command != "halt":
            return
        if switch is None:
            switch = KillSwitch(since=event.ts, reason=control.reason, flatten=control.flatten)
            self.risk = msgspec.structs.replace(self.risk, kill_switch=switch)
            action = Action(
                "kill_switch",
                f"trading halted by the operator: {control.reason or 'no reason given'}"
                + (", flattening every position" if control.flatten else ""),
                0.0 if control.flatten else 1.0,
                {"positions": float(len(self.book.positions))},
            )
            self._alert(action, "critical", event.corr)
        if control.flatten and self.book.positions and self._last_bar_time is not None:
            stamp = event.ts.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            tick = RebalanceDue(
                rebalance_id=f"halt-{stamp}",
                schedule=KILL_SWITCH_SCHEDULE,
                due=event.ts,
                decision_time=self._last_bar_time,
            )
            if not self._already_done(tick):
                self.pending.insert(0, (tick, event.corr))

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
            snapshot = self._with_risk(self.book.snapshot(self._last_bar_time))
            self.emit([snapshot], corr=event.corr, ts=event.ts)
        del self.open_orders[client_order_id]
        if last:
            self._try_pending()

    def _watching_var(self) -> bool:
        config = self.risk_config
        return config.enabled and config.var_check == "every-bar" and config.var_limit > 0

    def _book_var(self, until: datetime) -> float | None:
        """The VaR of the book as it stands (its weights at its last marks) over the trailing
        ``var_window`` returns up to ``until``; None: too few bars, or no equity, to measure."""
        held = tuple(sorted(self.book.positions))
        if not held:
            return 0.0
        prices = np.array([self.book.price(s) for s in held])
        quantities = np.array([self.book.positions[s] for s in held])
        equity = self.book.cash + float(prices @ quantities)
        if equity <= 0:
            return None
        config = self.risk_config
        returns = self.window.returns(held, config.var_window, until)
        periods = self.window.periods_per_year(_DEFAULT_PERIODS_PER_YEAR)
        return figures(returns, quantities * prices / equity, config, periods).var

    def _watch_var(self, asof: datetime, corr: str) -> None:
        """The VaR stop: measure the book's VaR on this bar (it becomes the snapshots'
        expected VaR) and, above the limit by more than the band, queue a cut onto it."""
        risk = self.risk
        if risk.drawdown.stopped or risk.kill_switch is not None or self.open_orders:
            return  # the book is held, or is changing: it is measured once it settles
        if any(t.schedule in RISK_SCHEDULES for t, _ in self.pending):
            return
        value = self._book_var(asof)
        if value is None:
            return
        self.risk = msgspec.structs.replace(risk, expected_var=value)
        config = self.risk_config
        if value <= config.var_limit * (1.0 + config.var_stop_band):
            return
        stamp = asof.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        tick = RebalanceDue(
            rebalance_id=f"var-{stamp}", schedule=VAR_SCHEDULE, due=asof, decision_time=asof
        )
        if self._already_done(tick):  # a bar delivered again after its cut ran
            return
        self.pending.insert(0, (tick, corr))
        scale = config.var_limit / value
        action = Action(
            "var_stop",
            f"{config.var_method} {config.var_confidence:.0%} {config.var_horizon}-bar VaR of "
            f"the book {value:.2%} above the limit {config.var_limit:.2%} by more than "
            f"{config.var_stop_band:.0%}: cut to the limit, exposure x{scale:.3f}",
            scale,
            {"var": value, "limit": config.var_limit, "band": config.var_stop_band},
        )
        self._alert(action, "warning", corr, asof, tick.rebalance_id)

    def _try_pending(self) -> None:
        while self.pending and not self.open_orders:
            tick, corr = self.pending[0]
            risk_cut = tick.schedule in RISK_SCHEDULES
            # An operator's halt lets the risk cuts and the flatten through, nothing else.
            if self.halted and not (risk_cut and self.halt_origin == "operator"):
                return
            if self._already_done(tick):  # a later tick of its schedule ran while it waited
                self.pending.pop(0)
                continue
            if risk_cut:
                self._risk_cut(tick, corr)
                self.pending.pop(0)
                continue
            if self.risk.kill_switch is not None:
                self.pending.pop(0)
                self._done(tick)
                log.warning(
                    "rebalance.skipped",
                    rebalance_id=tick.rebalance_id,
                    decision_time=tick.decision_time.isoformat(),
                    reason="kill switch on",
                )
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

    def _log_nothing_selected(
        self, tick: RebalanceDue, scores: np.ndarray, stopped: bool, history: int
    ) -> None:
        # Holding nothing must say why: still warming up is normal, a universe too small for
        # top_fraction is not.
        scored = int(np.count_nonzero(~np.isnan(scores)))
        construction = self.config.construction
        fields = {
            "rebalance_id": tick.rebalance_id,
            "decision_time": tick.decision_time.isoformat(),
            "scored_assets": scored,
            "construction": construction,
        }
        if scored == 0:
            reason = "no asset has a score yet (factor lookbacks still filling, or no bar)"
        elif stopped:
            reason = "the drawdown stop holds the book in cash"
        elif construction in ("optimizer", "inverse-volatility") and history < MIN_HISTORY:
            reason = f"{history} bars of returns, the risk model needs {MIN_HISTORY}"
        elif construction == "optimizer":
            reason = "no expected return beats its risk and turnover cost"
        else:
            fraction = self.config.top_fraction
            reason = f"top_fraction {fraction} of {scored} scored assets rounds down to 0"
            log.warning("rebalance.nothing_selected", reason=reason, **fields)
            return
        log.info("rebalance.nothing_selected", reason=reason, **fields)

    def _prices(self, bar: _Bar, symbols: tuple[str, ...]) -> dict[str, float]:
        """The decision bar's close of ``symbols`` and of every held symbol it prices."""
        prices = {s: bar.close[bar.index[s]] for s in symbols if s in bar.index}
        for symbol in self.book.positions:
            if symbol not in prices and symbol in bar.index:
                prices[symbol] = bar.close[bar.index[symbol]]
        return prices

    def _last_prices(self) -> dict[str, float]:
        """The latest close of every symbol of the last bar (the pre-trade collar's reference)."""
        if self._last_bar_time is None:
            return {}
        last = self._bars.get(self._last_bar_time)
        return {} if last is None else dict(zip(last.symbols, last.close))

    def _equity_at(self, prices: dict[str, float]) -> float:
        return self.book.cash + sum(
            q * prices.get(s, self.book.price(s)) for s, q in self.book.positions.items()
        )

    def _send(
        self,
        tick: RebalanceDue,
        corr: str,
        target: TargetPortfolio,
        requests: list[OrderRequest],
    ) -> None:
        """Publish the target and its orders, then record the tick done and the orders open.

        Recorded once published: nothing before changes state, so a raise before here leaves
        the tick to run again from scratch. The answers cannot come before this handler ends.
        """
        self.emit([target, *requests], corr=corr, ts=self.clock.now())
        self._done(tick)
        for request in requests:
            booked = self._unmatched_fills.pop(request.client_order_id, 0.0)
            self.open_orders[request.client_order_id] = _OpenOrder(quantity_filled=booked)

    def _risk_cut(self, tick: RebalanceDue, corr: str) -> None:
        """Cut every position to the drawdown stop's exposure, or onto the VaR limit (the VaR
        stop), or flatten (the kill switch), at the last bar's prices, with reduce-only
        orders."""
        started = time.perf_counter()
        flatten = tick.schedule == KILL_SWITCH_SCHEDULE
        var_stop = tick.schedule == VAR_SCHEDULE
        keep = 0.0 if flatten else self.risk_config.drawdown_exposure
        bar = self._bars.get(self._last_bar_time) if self._last_bar_time else None
        if bar is None or not self.book.positions:
            self._done(tick)
            log.info("rebalance.skipped", rebalance_id=tick.rebalance_id, reason="nothing held")
            return
        if var_stop:  # measured again: fills may have moved the book since it was queued
            assert self._last_bar_time is not None
            value = self._book_var(self._last_bar_time)
            if value is None or value <= self.risk_config.var_limit:
                self._done(tick)
                log.info(
                    "rebalance.skipped",
                    rebalance_id=tick.rebalance_id,
                    reason="the book's VaR is within its limit",
                )
                return
            keep = self.risk_config.var_limit / value
            self.risk = msgspec.structs.replace(self.risk, expected_var=value)
        limit = "kill_switch" if flatten else "var_stop" if var_stop else "drawdown_stop"
        symbols = tuple(sorted(self.book.positions))
        prices = self._prices(bar, symbols)
        equity = self._equity_at(prices)
        targets = {s: q * keep for s, q in self.book.positions.items()}
        plan = plan_orders(
            rebalance_id=tick.rebalance_id,
            asof=self._last_bar_time,
            targets=targets,
            positions=self.book.positions,
            prices=prices,
            last_prices=self._last_prices(),
            equity=equity,
            lot_rules=self.lot_rules,
            default_rules=self.default_lot,
            portfolio=self.config,
            risk=self.risk_config,
            reduce_only=True,
        )
        gross = sum(abs(q) * prices.get(s, self.book.price(s)) for s, q in targets.items())
        target = TargetPortfolio(
            rebalance_id=tick.rebalance_id,
            asof=self._last_bar_time,
            symbols=symbols,
            weights=tuple(targets[s] * prices.get(s, self.book.price(s)) / equity for s in symbols),
            cash_weight=max(0.0, 1.0 - gross / equity) if equity > 0 else 1.0,
            risk_actions=(limit,),
        )
        self._send(tick, corr, target, plan.requests)
        self._log_blocked(tick, plan.blocked, corr)
        expected = self.risk.expected_var
        self.risk = msgspec.structs.replace(
            self.risk, expected_var=None if expected is None else expected * keep
        )
        log.info(
            "rebalance.completed",
            rebalance_id=tick.rebalance_id,
            kind="flatten" if flatten else "var_cut" if var_stop else "drawdown_cut",
            decision_time=self._last_bar_time.isoformat(),
            equity=round(equity, 2),
            target_gross=round(gross / equity, 4) if equity > 0 else 0.0,
            drawdown=round(self._drawdown(equity), 6),
            limits=[limit],
            turnover=round(plan.turnover, 4),
            n_orders=len(plan.requests),
            blocked=len(plan.blocked),
            ms=round((time.perf_counter() - started) * 1e3, 3),
        )

    def _drawdown(self, equity: float) -> float:
        peak = max(self.book.high_water_mark, equity)
        return 1.0 - equity / peak if peak > 0 else 0.0

    def _log_blocked(self, tick: RebalanceDue, blocked: list[tuple[str, str]], corr: str) -> None:
        for symbol, reason in blocked:
            action = Action("pre_trade", f"{symbol}: {reason}", 0.0)
            when, rebalance_id = tick.decision_time, tick.rebalance_id
            self._alert(action, "warning", corr, when, rebalance_id, symbol=symbol)

    def _rebalance(self, tick: RebalanceDue, corr: str, bar: _Bar, signal: Signal) -> None:
        started = time.perf_counter()
        config, risk_config = self.config, self.risk_config
        stale = stale_data_reason(
            tick.decision_time, self.clock.now(), self.risk.bar_seconds, risk_config
        )
        if stale is not None:
            self._done(tick)
            action = Action("data_quality", stale, 0.0)
            self._alert(action, "warning", corr, tick.decision_time, tick.rebalance_id)
            log.warning("rebalance.skipped", rebalance_id=tick.rebalance_id, reason=stale)
            return
        symbols = signal.symbols
        scores = np.array(signal.scores, dtype=float)
        priced = np.array([s in bar.index for s in symbols])
        scores[~priced] = np.nan  # no bar now: cannot be bought at a known price
        prices = self._prices(bar, symbols)
        # Value the account at the decision bar, the prices the orders are sized with.
        equity = self._equity_at(prices)
        previous = np.array(
            [self.book.positions.get(s, 0.0) * prices.get(s, 0.0) / equity for s in symbols]
        )
        drawdown_state, reentered, why_not = reentry(
            self.risk.drawdown,
            equity,
            self.window.market_index(risk_config.reentry_trend_bars, tick.decision_time),
            risk_config,
        )
        returns = self.window.returns(
            symbols, max(config.covariance_window, risk_config.var_window), tick.decision_time
        )
        periods = self.window.periods_per_year(_DEFAULT_PERIODS_PER_YEAR)
        keep = risk_config.drawdown_exposure if drawdown_state.stopped else 1.0
        # A book the stop holds in cash is not measured against the other limits.
        decision = self.targets.build(scores, returns, previous, periods, limits=keep > 0)
        weights = decision.weights
        actions = list(decision.actions)
        after = decision.after
        if reentered is not None:
            actions.insert(0, reentered)
        if drawdown_state.stopped:
            since = drawdown_state.since.isoformat() if drawdown_state.since else "?"
            weights = weights * keep
            after = type(after)(
                *(None if v is None else v * keep for v in (after.var, after.es, after.volatility))
            )
            actions.append(
                Action(
                    "drawdown_hold",
                    f"stopped since {since} ({why_not}): exposure held at {keep:.0%} of target",
                    keep,
                    {"bars_stopped": float(drawdown_state.bars_stopped)},
                )
            )
        if not weights.any():
            self._log_nothing_selected(tick, scores, drawdown_state.stopped, len(returns))
        targets = {
            s: w * equity / prices[s]
            for s, w in zip(symbols, weights.tolist())
            if w != 0 and s in prices
        }
        plan = plan_orders(
            rebalance_id=tick.rebalance_id,
            asof=tick.decision_time,
            targets=targets,
            positions=self.book.positions,
            prices=prices,
            last_prices=self._last_prices(),
            equity=equity,
            lot_rules=self.lot_rules,
            default_rules=self.default_lot,
            portfolio=config,
            risk=risk_config,
            cash=self.book.cash,
            fee_rate=self.fee_rate,
        )
        if plan.buy_scale < 1.0:
            log.info(
                "rebalance.buys_scaled",
                rebalance_id=tick.rebalance_id,
                scale=round(plan.buy_scale, 6),
                buys_value=round(plan.buys_value, 2),
                cash_available=round(plan.cash_available, 2),
                cash_buffer=config.cash_buffer,
                fee_rate=self.fee_rate,
            )
        target = TargetPortfolio(
            rebalance_id=tick.rebalance_id,
            asof=tick.decision_time,
            symbols=symbols,
            weights=tuple(weights.tolist()),
            cash_weight=max(0.0, 1.0 - float(weights.sum())),
            risk_actions=tuple(action.kind for action in actions),
        )
        self._send(tick, corr, target, plan.requests)
        for action in actions:
            severity = "info" if action.kind == "drawdown_reentry" else "warning"
            self._alert(action, severity, corr, tick.decision_time, tick.rebalance_id)
        self._log_blocked(tick, plan.blocked, corr)
        self.risk = msgspec.structs.replace(
            self.risk, drawdown=drawdown_state, expected_var=after.var
        )
        log.info(
            "rebalance.completed",
            rebalance_id=tick.rebalance_id,
            kind="scheduled",
            decision_time=tick.decision_time.isoformat(),
            model=signal.model,
            fallback=signal.fallback,
            construction=config.construction,
            equity=round(equity, 2),
            target_gross=round(float(np.abs(decision.constructed).sum()), 4),
            achieved_gross=round(float(np.abs(weights).sum()), 4),
            **decision.before.as_log("before"),
            **after.as_log("after"),
            drawdown=round(self._drawdown(equity), 6),
            drawdown_stopped=drawdown_state.stopped,
            limits=[action.kind for action in actions],
            why=[action.message for action in actions],
            holdings=len(targets),
            n_orders=len(plan.requests),
            blocked=len(plan.blocked),
            turnover=round(plan.turnover, 4),
            solve_ms=None if decision.solve_ms is None else round(decision.solve_ms, 3),
            ms=round((time.perf_counter() - started) * 1e3, 3),
        )
