"""What makes a bar bad, in one place: the file loader, the ccxt source and the market-data
service all reject the same things, with the same reasons."""

from __future__ import annotations

import numpy as np

# Checks run in this order and the first failing one names the bar's problem. Infinite values
# come first so an inf is called what it is, not "high below open or close" (which inf > high
# would otherwise trip first).
REASONS = (
    "close is not finite",
    "open is not finite",
    "high is not finite",
    "low is not finite",
    "volume is not finite",
    "missing open",
    "missing high",
    "missing low",
    "non-positive open",
    "non-positive high",
    "non-positive low",
    "non-positive close",
    "high below low",
    "high below open or close",
    "low above open or close",
    "negative volume",
)
# The column each reason is about, so a log line can point at the cell (parallel to REASONS).
REASON_COLUMNS = (
    "close",
    "open",
    "high",
    "low",
    "volume",
    "open",
    "high",
    "low",
    "open",
    "high",
    "low",
    "close",
    "high",
    "high",
    "low",
    "volume",
)


def bar_problems(
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray | None,
) -> np.ndarray:
    """Return, per bar, the index into ``REASONS`` of its first problem, or -1 when it is good.

    Arrays share one shape; a bar whose close is NaN is a missing bar, not a bad one, and is
    reported as -1 too (the caller treats NaN closes as absent).
    """
    present = ~np.isnan(close)
    problem = np.full(close.shape, -1, dtype=np.int8)
    no_check = np.zeros(close.shape, bool)
    with np.errstate(invalid="ignore"):
        checks = (
            np.isinf(close),
            present & np.isinf(open_),
            present & np.isinf(high),
            present & np.isinf(low),
            present & np.isinf(volume) if volume is not None else no_check,
            present & np.isnan(open_),
            present & np.isnan(high),
            present & np.isnan(low),
            present & (open_ <= 0),
            present & (high <= 0),
            present & (low <= 0),
            present & (close <= 0),
            present & (high < low),
            present & (high < np.maximum(open_, close)),
            present & (low > np.minimum(open_, close)),
            present & (volume < 0) if volume is not None else no_check,
        )
    for index in range(len(checks) - 1, -1, -1):  # the first failing check wins
        problem[checks[index]] = index
    return problem


def close_only_problems(close: np.ndarray) -> np.ndarray:
    """``bar_problems`` for close-only data, whose open, high and low are the close itself.

    The same bars fail (an infinite or non-positive close), but the reason names the close, the
    one column such a file has, instead of the open that ``bar_problems`` would check first.
    """
    problem = np.full(close.shape, -1, dtype=np.int8)
    with np.errstate(invalid="ignore"):
        problem[close <= 0] = REASONS.index("non-positive close")
    problem[np.isinf(close)] = REASONS.index("close is not finite")
    return problem
