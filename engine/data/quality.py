"""What makes a bar bad, in one place: the file loader, the ccxt source and the market-data
service all reject the same things, with the same reasons."""

from __future__ import annotations

import numpy as np

REASONS = (
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
    with np.errstate(invalid="ignore"):
        checks = (
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
            present & (volume < 0) if volume is not None else np.zeros(close.shape, bool),
        )
    for index in range(len(checks) - 1, -1, -1):  # the first failing check wins
        problem[checks[index]] = index
    return problem
