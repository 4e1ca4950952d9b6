"""Recorder: follows the portfolio and the ledger to write a run's equity curve and summary.

A pure projection of its input streams, committed per batch with no state of its own: on start
it handles again every event its group already consumed on ``portfolio``, ``orders`` and
``fills`` (``Bus.consumed_history``, all of it), so a resumed run's ``summary.json`` and
``equity.csv`` cover the account's whole history. What it computes does not depend on how the
three topics interleave (rows are keyed by bar time, orders and fills counted by id), so each
topic's history is taken in its own order. ``portfolio`` is trimmed at ``[bus] stream_maxlen``
entries; ``orders`` and ``fills`` never are.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from engine.bus import Bus
from engine.clock import Clock
from engine.config import RiskConfig
from engine.events import (
    Envelope,
    EventPayload,
    Fill,
    OrderRequest,
    OrderUpdate,
    PortfolioMarks,
    PortfolioSnapshot,
    RiskAlert,
)
from engine.metrics import performance_summary
from services.runtime.loop import Handler, Service

log = structlog.get_logger("services.daemons.recorder")
EQUITY_COLUMNS = ("timestamp", "equity", "cash", "gross_exposure", "drawdown")
_Row = tuple[float, float, float, float]  # equity, cash, gross exposure, drawdown


class RecorderService(Service):
    """Keeps the account's last marks per bar (from snapshots and marks), and counts orders,
    fills, fees and traded notional, each order and fill once by its business id (a handler
    run again after a crash publishes them again under new event ids)."""

    name = "recorder"

    def __init__(self, bus: Bus, clock: Clock, risk: RiskConfig | None = None) -> None:
        self.risk = risk or RiskConfig()
        self.alerts: dict[str, int] = {}  # RiskAlerts per kind: the limits that acted
        self.rows: dict[datetime, _Row] = {}
        self.order_ids: set[str] = set()
        self.fill_ids: set[str] = set()
        # How each order ended (its first terminal update: a duplicate submit's answer repeats
        # it) and how much of it had filled then; fills per order.
        self.outcomes: dict[str, tuple[str, float]] = {}
        self.fills_per_order: dict[str, int] = {}
        self.fees = 0.0
        self.traded_notional = 0.0
        super().__init__(bus, clock)

    def handlers(self) -> dict[type[EventPayload], Handler]:
        return {
            PortfolioSnapshot: self.on_snapshot,
            PortfolioMarks: self.on_marks,
            OrderRequest: self.on_order,
            OrderUpdate: self.on_order_update,
            Fill: self.on_fill,
            RiskAlert: self.on_alert,
        }

    def start(self) -> None:
        """Rebuild from everything this service consumed before a restart."""
        replayed = 0
        topics = (
            PortfolioSnapshot.TOPIC,
            OrderRequest.TOPIC,
            OrderUpdate.TOPIC,
            Fill.TOPIC,
            RiskAlert.TOPIC,
        )
        for topic in topics:
            history = self.bus.consumed_history(self.name, topic, None)
            for event in history:
                self.handle(event)
            replayed += len(history)
        if replayed:
            log.info(
                "recorder.rebuilt",
                events=replayed,
                bars=len(self.rows),
                orders=len(self.order_ids),
                fills=len(self.fill_ids),
            )

    def on_snapshot(self, event: Envelope) -> None:
        s = event.payload
        assert isinstance(s, PortfolioSnapshot)
        self.rows[s.asof] = (s.equity, s.cash, s.gross_exposure, s.drawdown)  # post-trade wins

    def on_marks(self, event: Envelope) -> None:
        marks = event.payload
        assert isinstance(marks, PortfolioMarks)
        cash = (marks.cash,) * len(marks.asof)
        self.rows.update(
            zip(marks.asof, zip(marks.equity, cash, marks.gross_exposure, marks.drawdown))
        )

    def on_order(self, event: Envelope) -> None:
        order = event.payload
        assert isinstance(order, OrderRequest)
        self.order_ids.add(order.client_order_id)

    def on_order_update(self, event: Envelope) -> None:
        update = event.payload
        assert isinstance(update, OrderUpdate)
        if update.is_terminal and update.client_order_id not in self.outcomes:
            self.outcomes[update.client_order_id] = (update.status, update.filled_quantity)

    def on_fill(self, event: Envelope) -> None:
        fill = event.payload
        assert isinstance(fill, Fill)
        if fill.fill_id in self.fill_ids:
            return
        self.fill_ids.add(fill.fill_id)
        order = fill.client_order_id
        self.fills_per_order[order] = self.fills_per_order.get(order, 0) + 1
        self.fees += fill.fee
        self.traded_notional += fill.quantity * fill.price

    def on_alert(self, event: Envelope) -> None:
        alert = event.payload
        assert isinstance(alert, RiskAlert)
        self.alerts[alert.kind] = self.alerts.get(alert.kind, 0) + 1

    def _outcome_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for status, _ in self.outcomes.values():
            counts[status] = counts.get(status, 0) + 1
        return dict(sorted(counts.items()))

    def summary(self, initial_equity: float, periods_per_year: float, bars: int) -> dict[str, Any]:
        """Return the run's summary with the keys of the command-line contract."""
        times = sorted(self.rows)
        # The curve starts from the cash the run began with, before its first bar.
        equity = np.array([initial_equity] + [self.rows[t][0] for t in times])
        figures = performance_summary(equity, periods_per_year)
        average_equity = float(np.mean(equity))
        return {
            "start": times[0].isoformat() if times else None,
            "end": times[-1].isoformat() if times else None,
            "bars": bars,
            "initial_equity": initial_equity,
            "final_equity": float(equity[-1]),
            **figures,
            "orders": len(self.order_ids),
            "fills": len(self.fill_ids),
            "fees": self.fees,
            "order_outcomes": self._outcome_counts(),
            # Orders filled in more than one fill, or ended (cut, expired, cancelled) part-way.
            "partial_fills": sum(
                1
                for order, count in self.fills_per_order.items()
                if count > 1 or (order in self.outcomes and self.outcomes[order][0] != "filled")
            ),
            "turnover": self.traded_notional / average_equity if average_equity > 0 else 0.0,
            "periods_per_year": periods_per_year,
            "risk_limits": {
                "enabled": self.risk.enabled,
                "drawdown_stop": self.risk.drawdown_stop,
                "var_limit": self.risk.var_limit,
                "var_method": self.risk.var_method,
                "var_confidence": self.risk.var_confidence,
            },
            # How often each limit acted (RiskAlerts by kind).
            "limits_acted": dict(sorted(self.alerts.items())),
        }

    def write(self, out_dir: Path, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` and ``equity.csv`` into ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        with (out_dir / "equity.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(EQUITY_COLUMNS)
            for asof in sorted(self.rows):
                writer.writerow([asof.isoformat(), *map(repr, self.rows[asof])])
