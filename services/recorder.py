"""Recorder: follows the portfolio and the ledger to write a run's equity curve and summary."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from engine.bus import Bus
from engine.clock import Clock
from engine.events import Envelope, EventPayload, Fill, OrderRequest, PortfolioSnapshot
from engine.metrics import performance_summary
from services.runtime import Handler, Service

EQUITY_COLUMNS = ("timestamp", "equity", "cash", "gross_exposure", "drawdown")


class RecorderService(Service):
    """Keeps the last snapshot per bar, and counts orders, fills, fees and traded notional."""

    name = "recorder"

    def __init__(self, bus: Bus, clock: Clock) -> None:
        self.snapshots: dict[datetime, PortfolioSnapshot] = {}
        self.orders = 0
        self.fills = 0
        self.fees = 0.0
        self.traded_notional = 0.0
        super().__init__(bus, clock)

    def handlers(self) -> dict[type[EventPayload], Handler]:
        return {PortfolioSnapshot: self.on_snapshot, OrderRequest: self.on_order, Fill: self.on_fill}

    def on_snapshot(self, event: Envelope) -> None:
        snapshot = event.payload
        assert isinstance(snapshot, PortfolioSnapshot)
        self.snapshots[snapshot.asof] = snapshot  # later snapshots of a bar (post-trade) win

    def on_order(self, event: Envelope) -> None:
        self.orders += 1

    def on_fill(self, event: Envelope) -> None:
        fill = event.payload
        assert isinstance(fill, Fill)
        self.fills += 1
        self.fees += fill.fee
        self.traded_notional += fill.quantity * fill.price

    def summary(self, initial_equity: float, periods_per_year: float, bars: int) -> dict[str, Any]:
        """Return the run's summary with the keys of the command-line contract."""
        rows = [self.snapshots[t] for t in sorted(self.snapshots)]
        # The curve starts from the cash the run began with, before its first bar.
        equity = np.array([initial_equity] + [s.equity for s in rows])
        figures = performance_summary(equity, periods_per_year)
        average_equity = float(np.mean(equity))
        return {
            "start": rows[0].asof.isoformat() if rows else None,
            "end": rows[-1].asof.isoformat() if rows else None,
            "bars": bars,
            "initial_equity": initial_equity,
            "final_equity": float(equity[-1]),
            **figures,
            "orders": self.orders,
            "fills": self.fills,
            "fees": self.fees,
            "turnover": self.traded_notional / average_equity if average_equity > 0 else 0.0,
            "periods_per_year": periods_per_year,
        }

    def write(self, out_dir: Path, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` and ``equity.csv`` into ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        with (out_dir / "equity.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(EQUITY_COLUMNS)
            for asof in sorted(self.snapshots):
                s = self.snapshots[asof]
                writer.writerow([asof.isoformat(), repr(s.equity), repr(s.cash),
                                 repr(s.gross_exposure), repr(s.drawdown)])
