"""Clocks: wall time for live daemons, simulated time for backtests and replays.

Services ask the clock, never ``datetime.now()``, so the same code runs in both modes.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Where "now" comes from."""

    def now(self) -> datetime:
        """Return the current time, timezone-aware UTC."""
        ...


class WallClock:
    """The machine's clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class SimulatedClock:
    """Time that moves only when the driver advances it, and never backwards."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError(f"simulated clock needs an aware UTC start, received {start!r}")
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return self._now

    def advance_to(self, when: datetime) -> None:
        """Move to ``when``; moving backwards is a driver bug and raises ValueError."""
        with self._lock:
            if when < self._now:
                raise ValueError(f"simulated clock cannot go back from {self._now} to {when}")
            self._now = when
