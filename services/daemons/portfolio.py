"""The account as the rebalancer sees it: cash and positions built from fills alone, marked to
the latest closes. Fills are the ledger; this is derived state (event sourcing).

A fill is booked once by its ``fill_id``: the bus delivers at least once, and a handler that
runs again publishes the same fill under a new event id, which the bus's event-id dedupe does
not catch.

The book is part of the rebalancer's committed state (``state``/``restore``): a restarted
rebalancer continues it where its last commit left it, fill ids remembered included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import msgspec
import numpy as np
import structlog

from engine.data.fill import carry_forward
from engine.events import Fill, PortfolioMarks, PortfolioSnapshot

log = structlog.get_logger("services.daemons.portfolio")
# Fill ids remembered to refuse a second booking. Inside a run no duplicate arises: a service's
# outputs are published by the commit that acknowledges its input (a transactional outbox), so
# a handler run again after a crash publishes once. The window guards against a publisher
# outside that rule (an operator's replay, a future exchange adapter retrying) repeating recent
# fills. The ids go into the state committed with every message the rebalancer handles, so the
# window is small: 1,024 ids, about 45 KB of each snapshot.
FILL_IDS_KEPT = 1024


class BookState(msgspec.Struct, frozen=True, kw_only=True):
    """What ``PortfolioBook.state`` returns and ``restore`` takes: the whole book.

    ``bar_close`` are the closes of the bar the book is marked at; their symbols are the
    caller's (the rebalancer's last universe), given back to ``restore`` as an index.
    """

    cash: float
    positions: dict[str, float]
    marks: dict[str, float]
    fills_applied: int
    high_water_mark: float
    fill_ids: list[str]
    bar_close: tuple[float, ...]


@dataclass
class PortfolioBook:
    """Cash, positions and marks (fees and turnover are the recorder's, from the same fills).

    A held symbol is marked at its close in the latest bar set that has it; until one arrives
    after the position opened, at its fill price.
    """

    cash: float
    positions: dict[str, float] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)
    fills_applied: int = 0
    high_water_mark: float = 0.0
    fill_ids_kept: int = FILL_IDS_KEPT
    _fill_ids: dict[str, None] = field(default_factory=dict)  # insertion-ordered: oldest first
    _bar_index: dict[str, int] = field(default_factory=dict)
    _bar_close: tuple[float, ...] = ()

    def apply_fill(self, fill: Fill) -> bool:
        """Move cash and position by one fill; return False, with no effect, for a fill whose
        ``fill_id`` is already booked.

        The fee comes off the cash when it is in the quote currency (the paper broker's, and
        a symbol without a ``/``), off the position when in the base asset (an exchange
        charging a buy in what it bought); a fee in a third currency (BNB on Binance) is
        paid from a balance this book does not hold, and is logged.
        """
        if fill.fill_id in self._fill_ids:
            log.warning(
                "fill.duplicate_ignored",
                fill_id=fill.fill_id,
                client_order_id=fill.client_order_id,
            )
            return False
        notional = fill.quantity * fill.price
        base, _, quote = fill.symbol.partition("/")
        cash_fee = position_fee = 0.0
        if not quote or fill.fee_currency == quote:
            cash_fee = fill.fee
        elif fill.fee_currency == base:
            position_fee = fill.fee
        elif fill.fee:
            log.info(
                "fill.fee_in_other_currency",
                fill_id=fill.fill_id,
                fee=fill.fee,
                fee_currency=fill.fee_currency,
            )
        if fill.side == "buy":
            self.cash -= notional + cash_fee
            held = self.positions.get(fill.symbol, 0.0) + fill.quantity - position_fee
        else:
            self.cash += notional - cash_fee
            held = self.positions.get(fill.symbol, 0.0) - fill.quantity - position_fee
        if abs(held) <= 1e-12:
            self.positions.pop(fill.symbol, None)
        else:
            self.positions[fill.symbol] = held
        if fill.symbol not in self.marks:
            self.marks[fill.symbol] = fill.price
        self.fills_applied += 1
        self._fill_ids[fill.fill_id] = None  # last: nothing above can leave it half booked
        if len(self._fill_ids) > self.fill_ids_kept:
            del self._fill_ids[next(iter(self._fill_ids))]
        return True

    def state(self) -> BookState:
        """Return the book as a struct (shares nothing mutable with it)."""
        return BookState(
            cash=self.cash,
            positions=dict(self.positions),
            marks=dict(self.marks),
            fills_applied=self.fills_applied,
            high_water_mark=self.high_water_mark,
            fill_ids=list(self._fill_ids),
            bar_close=self._bar_close,
        )

    def restore(self, state: BookState, bar_index: dict[str, int]) -> None:
        """Become the book ``state`` describes; ``bar_index`` maps the symbols of its
        ``bar_close`` to their columns (what was last passed to ``mark``)."""
        if len(bar_index) != len(state.bar_close):
            raise ValueError(
                f"book state: {len(state.bar_close)} closes for {len(bar_index)} symbols"
            )
        self.cash = state.cash
        self.positions = dict(state.positions)
        self.marks = dict(state.marks)
        self.fills_applied = state.fills_applied
        self.high_water_mark = state.high_water_mark
        self._fill_ids = dict.fromkeys(state.fill_ids[-self.fill_ids_kept :])
        self._bar_index, self._bar_close = bar_index, tuple(state.bar_close)

    def mark(self, index: dict[str, int], closes: tuple[float, ...]) -> None:
        """Take a bar set's closes as the latest marks (held symbols absent from it keep theirs)."""
        # A held symbol missing from the new bar keeps the outgoing bar's close: freeze those
        # marks first. The same universe object means no symbol can go missing: skip.
        if self.positions and self._bar_close and index is not self._bar_index:
            self.marks.update(self._held_prices())
        self._bar_index, self._bar_close = index, closes

    def _held_prices(self) -> dict[str, float]:
        index, closes, marks = self._bar_index, self._bar_close, self.marks
        prices = {}
        for symbol in self.positions:
            column = index.get(symbol)
            prices[symbol] = closes[column] if column is not None else marks[symbol]
        return prices

    def price(self, symbol: str) -> float:
        """Return the mark of ``symbol``."""
        column = self._bar_index.get(symbol)
        if column is not None:
            return self._bar_close[column]
        return self.marks[symbol]

    def snapshot(self, asof: datetime) -> PortfolioSnapshot:
        """Return the marked account, updating the high-water mark."""
        held_prices = self._held_prices()
        values = [q * held_prices[s] for s, q in self.positions.items()]
        equity = self.cash + sum(values)
        self.high_water_mark = max(self.high_water_mark, equity)
        drawdown = 1.0 - equity / self.high_water_mark if self.high_water_mark > 0 else 0.0
        return PortfolioSnapshot(
            asof=asof,
            equity=equity,
            cash=self.cash,
            positions=dict(self.positions),
            prices=held_prices,
            gross_exposure=sum(abs(v) for v in values) / equity if equity > 0 else 0.0,
            high_water_mark=self.high_water_mark,
            drawdown=max(0.0, drawdown),
            fills_applied=self.fills_applied,
        )

    def mark_rows(
        self,
        asof: list[datetime],
        symbols: tuple[str, ...],
        close: np.ndarray,
        index: dict[str, int],
        closes: tuple[float, ...],
    ) -> PortfolioMarks | None:
        """Mark the account at each row of ``close`` (bars x ``symbols``, NaN = no bar) but the
        last, as ``mark`` then ``snapshot`` would row by row; return those marks (None for one
        row). The book is left marked at the last row, given as for ``mark`` (``index`` and
        ``closes`` of the symbols with a bar then), ready for ``snapshot``.

        The arithmetic is the row-by-row one, element for element (sums over holdings in the
        same order), so the marks are identical, not merely close.
        """
        held = list(self.positions)
        column = {s: i for i, s in enumerate(symbols)}
        marks = None
        if len(asof) > 1:
            n = len(asof) - 1
            start = np.array([self.price(s) for s in held])  # the marks before these rows
            prices = np.repeat(start[None, :], n, axis=0)
            traded = [k for k, s in enumerate(held) if s in column]
            if traded:
                prices[:, traded] = carry_forward(
                    close[:n, [column[held[k]] for k in traded]], start[traded]
                )
            values = prices * np.array([self.positions[s] for s in held])
            # Accumulate along the holdings: the same sequential sum, in holding order, as
            # the row-by-row snapshot's sum() over positions.
            held_total = np.add.accumulate(values, axis=1)[:, -1] if held else np.zeros(n)
            gross_total = np.add.accumulate(np.abs(values), axis=1)[:, -1] if held else np.zeros(n)
            equity = self.cash + held_total
            high_water = np.maximum.accumulate(np.concatenate([[self.high_water_mark], equity]))[1:]
            with np.errstate(divide="ignore", invalid="ignore"):
                drawdown = np.where(high_water > 0, 1.0 - equity / high_water, 0.0)
                gross = np.where(equity > 0, gross_total / equity, 0.0)
            self.high_water_mark = float(high_water[-1])
            marks = PortfolioMarks(
                asof=tuple(asof[:n]),
                equity=tuple(equity.tolist()),
                cash=self.cash,
                positions=dict(self.positions),
                prices={s: tuple(prices[:, k].tolist()) for k, s in enumerate(held)},
                gross_exposure=tuple(gross.tolist()),
                high_water_mark=tuple(high_water.tolist()),
                drawdown=tuple(np.maximum(drawdown, 0.0).tolist()),
                fills_applied=self.fills_applied,
            )
        if marks is None:
            self.mark(index, closes)
            return None
        # A held symbol absent from the last row is marked at its last close in the rows
        # before (what ``mark`` would have frozen on the way), then the last row is current.
        for k, symbol in enumerate(held):
            self.marks[symbol] = float(prices[-1, k])
        self._bar_index, self._bar_close = index, closes
        return marks
