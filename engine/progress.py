"""Progress of a long job (a backtest over years, a data fetch, a fit), shown the way its reader
sees it: a tqdm bar when the stream is a terminal, a ``job.progress`` log event at most every
``interval_s`` otherwise (a daemon, a container, a CI log), so a job that runs for hours is
never silent in its log and never floods it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

import structlog

log = structlog.get_logger("engine.progress")
INTERVAL_S = 30.0


class JobProgress:
    """Count the units done of one job and show them.

    Parameters
    ----------
    job
        The job's name, as logged (``backtest``, ``data_fetch``, ``train``, ``replay``).
    total
        Units in the whole job; None when unknown (no percentage, no time left).
    unit
        What one unit is (``bar``, ``symbol``, ``epoch``).
    stream
        Where a terminal would show the bar (default stderr). Logs go where logging goes.
    bar
        Draw a tqdm bar when ``stream`` is a terminal; False when the caller draws its own (the
        training's per-fit bars) or shares the terminal with other output.
    interval_s
        Least time between two ``job.progress`` events (default ``INTERVAL_S``, 30 s).
    fields
        Bound to every event of this job (its run, its symbols).
    """

    def __init__(
        self,
        job: str,
        total: int | None,
        unit: str,
        *,
        stream: TextIO | None = None,
        bar: bool = True,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        **fields: Any,
    ) -> None:
        self.job, self.total, self.unit = job, total, unit
        self.done = 0
        self._clock = clock
        self._started = self._last = clock()
        self._interval_s = INTERVAL_S if interval_s is None else interval_s
        self._fields = fields
        stream = sys.stderr if stream is None else stream
        self._terminal = _is_terminal(stream)
        self._bar = None
        if self._terminal and bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=job, unit=unit, file=stream, leave=False)

    def update(self, units: int = 1, **fields: Any) -> None:
        """Count ``units`` more done; ``fields`` (the current symbol, the loss) go with the next
        event or onto the bar."""
        self.done += units
        if self._bar is not None:
            self._bar.update(units)
            if fields:
                self._bar.set_postfix(fields, refresh=False)
            return
        if self._terminal:
            return  # the caller draws its own bar
        now = self._clock()
        if now - self._last >= self._interval_s:
            self._last = now
            self._log(now, fields)

    def _log(self, now: float, fields: dict[str, Any]) -> None:
        elapsed = now - self._started
        rate = self.done / elapsed if elapsed > 0 else None
        figures: dict[str, Any] = {
            "done": self.done,
            "total": self.total,
            "unit": self.unit,
            "elapsed_s": round(elapsed, 1),
            "rate_per_s": None if rate is None else round(rate, 3),
        }
        if self.total:
            figures["percent"] = round(100.0 * self.done / self.total, 1)
            left = self.total - self.done
            figures["eta_s"] = round(left / rate, 1) if rate else None
        log.info("job.progress", job=self.job, **figures, **self._fields, **fields)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> JobProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
