"""How good is a factor: per-period rank IC and quantile long-short return against the next
period's returns, and their summary statistics over a sample.

Periods do not overlap (one every ``horizon`` bars), so the t-statistics are not inflated by
overlapping returns. Exposures at t are compared with returns from t to t + horizon only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def forward_returns(close: np.ndarray, horizon: int) -> np.ndarray:
    """Return close[t + horizon] / close[t] - 1, NaN where either end is missing."""
    out = np.full(close.shape, np.nan)
    if horizon < len(close):
        out[:-horizon] = close[horizon:] / close[:-horizon] - 1.0
    return out


# Up to this many (rows x assets x assets) comparisons, ranks come from comparing every pair of
# assets in a row: three numpy calls, about half the cost of sorting a small cross-section.
PAIRWISE_RANK_MAX_CELLS = 4096


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Return each row's 1-based ranks among its non-NaN entries, ties sharing the mean of their
    positions (pandas' rank(method="average")); NaN entries stay NaN.

    One sort for all rows: pandas' frame rank costs about 100 microseconds a call even on a few
    assets, and the backtest ranks a small cross-section at every rebalance.
    """
    missing = np.isnan(values)
    n_rows, n_columns = values.shape
    # NaN would sort last too, but about three times slower than +inf. A NaN's +inf can only
    # join a group of real +inf, which it stretches past the row's valid entries: clamped below.
    keys = np.where(missing, np.inf, values)
    flat = np.argsort(keys, axis=1)
    flat += np.arange(n_rows).reshape(-1, 1) * n_columns
    ordered = keys.ravel()[flat]
    # Tie groups, by flat position in the sorted rows: each starts where the value changes (and
    # at every row's start) and ends where the next one starts.
    starts = np.ones(ordered.shape, dtype=bool)
    np.not_equal(ordered[:, 1:], ordered[:, :-1], out=starts[:, 1:])
    first = np.flatnonzero(starts)
    groups_per_row = np.add.reduce(starts, axis=1)
    row_start = np.arange(n_rows) * n_columns
    valid_end = np.repeat(row_start + (n_columns - np.add.reduce(missing, axis=1)), groups_per_row)
    row_start = np.repeat(row_start, groups_per_row)
    end = np.minimum(np.append(first[1:], ordered.size), valid_end)
    # Twice the mean of the positions first + 1 .. end within the row, an integer: halved, an
    # exact half-integer, as is pandas' sum of the positions over the group's size.
    twice = first + end + 1
    twice -= 2 * row_start
    group = np.cumsum(starts).reshape(n_rows, n_columns)
    group -= 1
    ranks = np.empty(values.size)
    ranks[flat] = twice[group] / 2
    return np.where(missing, np.nan, ranks.reshape(n_rows, n_columns))


def _doubled_rank_deviations(values: np.ndarray) -> np.ndarray:
    """Return twice each entry's average rank (as :func:`_average_ranks`) minus twice the mean
    rank of its row's non-NaN entries, count + 1; 0 for NaN entries.

    Doubled, the deviations are integers. Ranks and means are multiples of 1/2, so every sum of
    their products is exact in float64 (up to about 100,000 assets), and scaling all of them by
    a power of two leaves a correlation unchanged to the bit.
    """
    n_rows, n_columns = values.shape
    if n_rows * n_columns * n_columns <= PAIRWISE_RANK_MAX_CELLS:
        # under[r, i, j]: entry j is under entry i (NaN compares false, so it neither counts
        # nor is counted). An entry's rank is below + (tied + 1) / 2 and the row's mean rank
        # (below + tied + above + 1) / 2: doubled, the difference is below - above.
        under = (values[:, None, :] < values[:, :, None]).view(np.int8)
        return np.add.reduce(under - under.transpose(0, 2, 1), axis=2)
    ranks = _average_ranks(values)
    missing = np.isnan(ranks)
    count = n_columns - np.add.reduce(missing, axis=1, keepdims=True)
    return np.where(missing, 0.0, 2 * ranks - (count + 1))


def rank_ic(exposures: np.ndarray, forward: np.ndarray, min_assets: int = 5) -> np.ndarray:
    """Return, per row, the Spearman correlation of exposures with forward returns over assets
    where both are known (ties get average ranks); NaN with fewer than ``min_assets``."""
    unknown = np.isnan(exposures) | np.isnan(forward)
    n_rows, n_assets = unknown.shape
    # Both inputs ranked in one call, each over the assets where the other is known too.
    pair = np.where(
        unknown, np.nan, np.concatenate((exposures, forward)).reshape(2, n_rows, n_assets)
    )
    # Pearson's r of the ranks, on doubled deviations: the same sums, exactly, times 4.
    doubled = _doubled_rank_deviations(pair.reshape(2 * n_rows, n_assets))
    x, y = doubled.reshape(2, n_rows, n_assets)
    squares = np.add.reduce(doubled * doubled, axis=1).reshape(2, n_rows)
    covariance = np.add.reduce(x * y, axis=1)
    scale = np.sqrt(squares[0] * squares[1])
    count = n_assets - np.add.reduce(unknown, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ic = covariance / scale
    ic[(count < min_assets) | (scale == 0)] = np.nan
    return ic


def quantile_spread(
    exposures: np.ndarray, forward: np.ndarray, quantiles: int = 5, min_assets: int = 5
) -> np.ndarray:
    """Return, per row, the equal-weight forward return of the top exposure quantile minus
    that of the bottom quantile (each holds floor(n / quantiles) assets, at least one)."""
    out = np.full(len(exposures), np.nan)
    known = ~(np.isnan(exposures) | np.isnan(forward))
    for t in np.flatnonzero(np.add.reduce(known, axis=1) >= max(min_assets, 2)):
        valid = np.flatnonzero(known[t])
        size = max(1, len(valid) // quantiles)
        order = valid[np.argsort(exposures[t, valid], kind="stable")]
        returns = forward[t]
        # add.reduce / size is ndarray.mean without its Python wrapper: the same sum, divided.
        out[t] = (
            np.add.reduce(returns[order[-size:]]) / size
            - np.add.reduce(returns[order[:size]]) / size
        )
    return out


@dataclass(frozen=True)
class FactorEvaluation:
    """One factor's per-period series and summary."""

    name: str
    ic: np.ndarray
    spread: np.ndarray
    period_times: np.ndarray

    def summary(self, periods_per_year: float) -> dict[str, float]:
        """IC mean, std, ICIR (mean/std), t-stat, hit rate; long-short mean, annualised, t-stat."""
        ic = self.ic[~np.isnan(self.ic)]
        spread = self.spread[~np.isnan(self.spread)]
        ic_std = float(ic.std(ddof=1)) if len(ic) > 1 else math.nan
        spread_std = float(spread.std(ddof=1)) if len(spread) > 1 else math.nan
        return {
            "periods": int(len(ic)),
            "ic_mean": float(ic.mean()) if len(ic) else math.nan,
            "ic_std": ic_std,
            "icir": float(ic.mean() / ic_std) if ic_std and ic_std > 0 else math.nan,
            "ic_tstat": float(ic.mean() / ic_std * math.sqrt(len(ic)))
            if ic_std and ic_std > 0
            else math.nan,
            "ic_hit_rate": float((ic > 0).mean()) if len(ic) else math.nan,
            "long_short_mean": float(spread.mean()) if len(spread) else math.nan,
            "long_short_annualised": float(spread.mean() * periods_per_year)
            if len(spread)
            else math.nan,
            "long_short_tstat": (
                float(spread.mean() / spread_std * math.sqrt(len(spread)))
                if spread_std and spread_std > 0
                else math.nan
            ),
        }


def evaluate_factor(
    name: str,
    exposures: np.ndarray,
    close: np.ndarray,
    times: np.ndarray,
    horizon: int,
    quantiles: int = 5,
    min_assets: int = 5,
) -> FactorEvaluation:
    """Evaluate one factor on non-overlapping periods of ``horizon`` bars."""
    forward = forward_returns(close, horizon)
    rows = np.arange(0, len(close) - horizon, horizon)
    return FactorEvaluation(
        name=name,
        ic=rank_ic(exposures[rows], forward[rows], min_assets),
        spread=quantile_spread(exposures[rows], forward[rows], quantiles, min_assets),
        period_times=times[rows],
    )
