"""Carrying the last known value forward across bars without one."""

from __future__ import annotations

import numpy as np


def carry_forward(rows: np.ndarray, before: np.ndarray) -> np.ndarray:
    """Return, for each row of ``rows`` (bars x columns, NaN = no value then), each column's
    last value at or before that row; ``before`` (one value per column) until it has one.

    What a mark or a last close holds while a symbol has no bar: the values are copied, never
    computed, so the result is exactly what stepping bar by bar would hold.
    """
    seen = np.where(np.isnan(rows), -1, np.arange(len(rows))[:, None])
    np.maximum.accumulate(seen, axis=0, out=seen)  # the last row with a value, or -1
    carried = np.take_along_axis(rows, np.maximum(seen, 0), axis=0)
    return np.where(seen >= 0, carried, before)
