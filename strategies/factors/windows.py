"""Window sums and maxima that the full-history and the bar-by-bar paths compute bit for bit alike.

A window of ``length`` rows ending at bar ``t`` is cut by the block grid (blocks of ``length``
rows starting at bar 0) into the tail of the previous block and the head of the current one:

    window(t) = suffix[previous block, from the window's first row] (op) prefix[current block, to t]

Both parts are sequential accumulations over at most ``length`` rows, so a sum carries the
rounding of a plain sum of the window, not the drift of a running ``+ new - old`` total or the
cancellation of a cumulative-sum difference. The incremental path keeps the current block's
prefix (one operation per bar) and, once per block, recomputes the suffixes of the block just
completed from its rows: that recomputation is the exact refresh, O(assets) per bar amortised.
Because both paths perform the same floating-point operations in the same order, their results
are identical, not merely close.

A NaN anywhere in the window makes the result NaN (``np.add`` and ``np.maximum`` propagate it),
which is the library's rule: a missing bar inside a window excludes the asset. Bars before the
first one count as missing.
"""

from __future__ import annotations

import numpy as np

REDUCERS: dict[str, tuple[np.ufunc, float]] = {
    "sum": (np.add, 0.0),
    "max": (np.maximum, -np.inf),
}


def window_reduce(values: np.ndarray, length: int, reducer: str) -> np.ndarray:
    """Return the ``reducer`` ("sum" or "max") of each trailing window of ``length`` rows.

    Parameters
    ----------
    values
        Array shaped (T, N), oldest row first; NaN marks a missing value.
    length
        Rows per window, the decision row included.
    reducer
        "sum" or "max".

    Returns
    -------
    numpy.ndarray
        Shaped (T, N); row t reduces rows t - length + 1 .. t, NaN when any of them is NaN or
        lies before row 0.
    """
    op, identity = REDUCERS[reducer]
    n_rows, n_columns = values.shape
    n_blocks = -(-n_rows // length)
    blocks = np.empty((n_blocks * length, n_columns))
    blocks[:n_rows] = values
    blocks[n_rows:] = identity  # padding only ever reaches rows past the end
    blocks = blocks.reshape(n_blocks, length, n_columns)
    # Row loops rather than op.accumulate(axis=1), which is slower on a middle axis; the
    # order of operations is the same sequential one, so the results are identical.
    suffix = np.empty_like(blocks)
    suffix[:, -1] = blocks[:, -1]
    for row in range(length - 2, -1, -1):
        op(suffix[:, row + 1], blocks[:, row], out=suffix[:, row])
    prefix = blocks  # accumulated in place: the block rows are no longer needed
    for row in range(1, length):
        op(prefix[:, row - 1], prefix[:, row], out=prefix[:, row])
    # Same operand order as WindowState.push: suffix of the previous block, then the prefix.
    op(suffix[:-1, 1:], prefix[1:, :-1], out=prefix[1:, :-1])
    prefix[0, :-1] = np.nan
    op(np.full(n_columns, identity), prefix[:, -1], out=prefix[:, -1])
    return prefix.reshape(n_blocks * length, n_columns)[:n_rows]


class WindowState:
    """One trailing window reduction kept up to date one row at a time (see the module notes).

    Rows are pushed in bar order starting at bar 0, so block boundaries fall on the same bars as
    in :func:`window_reduce`; pushing the same rows gives the same values, bit for bit.
    """

    __slots__ = ("length", "_op", "_identity", "_rows", "_suffix", "_prefix", "_position")

    def __init__(self, length: int, reducer: str, n_columns: int) -> None:
        self.length = length
        self._op, self._identity = REDUCERS[reducer]
        self._rows = np.full((length, n_columns), np.nan)
        # Row i holds the previous block reduced from its row i to its end; row ``length`` is
        # the identity, used when the window is exactly the current block.
        self._suffix = np.full((length + 1, n_columns), np.nan)
        self._suffix[length] = self._identity
        self._prefix = np.full(n_columns, np.nan)
        self._position = length - 1  # the first push starts block 0

    def add_columns(self, count: int) -> None:
        """Append ``count`` columns whose history so far is missing."""
        pad = np.full((self.length, count), np.nan)
        self._rows = np.hstack([self._rows, pad])
        suffix_pad = np.full((self.length + 1, count), np.nan)
        suffix_pad[self.length] = self._identity
        self._suffix = np.hstack([self._suffix, suffix_pad])
        self._prefix = np.concatenate([self._prefix, np.full(count, np.nan)])

    def push(self, row: np.ndarray) -> np.ndarray:
        """Add the next bar's ``row`` and return the reduction of the window ending at it."""
        position = self._position + 1
        if position == self.length:
            position = 0
            self._prefix[:] = row  # accumulate's first element is the row itself
        else:
            self._op(self._prefix, row, out=self._prefix)
        self._rows[position] = row
        value = self._op(self._suffix[position + 1], self._prefix)
        if position == self.length - 1:  # block complete: its suffixes serve the next block
            suffix, rows, op = self._suffix, self._rows, self._op
            suffix[-2] = rows[-1]
            for row in range(self.length - 2, -1, -1):
                op(suffix[row + 1], rows[row], out=suffix[row])
        self._position = position
        return value

    def push_many(self, rows: np.ndarray) -> None:
        """Add several bars' rows (oldest first), as that many ``push`` calls would, with the
        same operations in the same order (accumulate is the sequential fold of ``push``)."""
        op, length = self._op, self.length
        start = 0
        while start < len(rows):
            position = self._position + 1
            if position == length:
                position = 0
            stop = min(len(rows), start + length - position)
            chunk = rows[start:stop]
            if position == 0:
                self._prefix[:] = op.accumulate(chunk, axis=0)[-1]
            else:
                self._prefix[:] = op.accumulate(np.vstack([self._prefix, chunk]), axis=0)[-1]
            self._rows[position : position + len(chunk)] = chunk
            self._position = position + len(chunk) - 1
            if self._position == length - 1:  # block complete: its suffixes serve the next
                self._suffix[:length] = op.accumulate(self._rows[::-1], axis=0)[::-1]
            start = stop


class LagBuffer:
    """The last ``depth`` rows of one series, so ``lag(k)`` is the row ``k`` bars back."""

    __slots__ = ("_rows", "_depth", "_position")

    def __init__(self, depth: int, n_columns: int) -> None:
        self._depth = depth
        self._rows = np.full((depth, n_columns), np.nan)
        self._position = -1

    def add_columns(self, count: int) -> None:
        """Append ``count`` columns whose history so far is missing."""
        self._rows = np.hstack([self._rows, np.full((self._depth, count), np.nan)])

    def push(self, row: np.ndarray) -> None:
        """Add the next bar's row."""
        self._position = (self._position + 1) % self._depth
        self._rows[self._position] = row

    def push_many(self, rows: np.ndarray) -> None:
        """Add several bars' rows (oldest first), as that many ``push`` calls would."""
        depth = self._depth
        if len(rows) >= depth:
            rows = rows[-depth:]
            self._position = (self._position + len(rows) - depth) % depth
        slots = (self._position + 1 + np.arange(len(rows))) % depth
        self._rows[slots] = rows
        self._position = (self._position + len(rows)) % depth

    def lag(self, k: int) -> np.ndarray:
        """Return the row pushed ``k`` bars before the latest (NaN before the first)."""
        return self._rows[(self._position - k) % self._depth]
