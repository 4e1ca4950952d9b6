"""How good is a factor: per-period rank IC and quantile long-short return against the next
period's returns, and their summary statistics over a sample.

Periods do not overlap (one every ``horizon`` bars), so the t-statistics are not inflated by
overlapping returns. Exposures at t are compared with returns from t to t + horizon only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd


def forward_returns(close: np.ndarray, horizon: int) -> np.ndarray:
    """Return close[t + horizon] / close[t] - 1, NaN where either end is missing."""
    out = np.full(close.shape, np.nan)
    if horizon < len(close):
        out[:-horizon] = close[horizon:] / close[:-horizon] - 1.0
    return out


def rank_ic(exposures: np.ndarray, forward: np.ndarray, min_assets: int = 5) -> np.ndarray:
    """Return, per row, the Spearman correlation of exposures with forward returns over assets
    where both are known (ties get average ranks); NaN with fewer than ``min_assets``."""
    both = ~np.isnan(exposures) & ~np.isnan(forward)
    x = pd.DataFrame(np.where(both, exposures, np.nan)).rank(axis=1).to_numpy()
    y = pd.DataFrame(np.where(both, forward, np.nan)).rank(axis=1).to_numpy()
    count = both.sum(axis=1)
    safe = np.maximum(count, 1)[:, None]  # rows with no pair: means of nothing, masked below
    with np.errstate(invalid="ignore", divide="ignore"):
        x = x - np.nansum(x, axis=1, keepdims=True) / safe
        y = y - np.nansum(y, axis=1, keepdims=True) / safe
        covariance = np.nansum(x * y, axis=1)
        scale = np.sqrt(np.nansum(x * x, axis=1) * np.nansum(y * y, axis=1))
        ic = covariance / scale
    ic[(count < min_assets) | (scale == 0)] = np.nan
    return ic


def quantile_spread(exposures: np.ndarray, forward: np.ndarray, quantiles: int = 5,
                    min_assets: int = 5) -> np.ndarray:
    """Return, per row, the equal-weight forward return of the top exposure quantile minus
    that of the bottom quantile (each holds floor(n / quantiles) assets, at least one)."""
    out = np.full(len(exposures), np.nan)
    for t in range(len(exposures)):
        valid = np.flatnonzero(~np.isnan(exposures[t]) & ~np.isnan(forward[t]))
        if len(valid) < max(min_assets, 2):
            continue
        size = max(1, len(valid) // quantiles)
        order = valid[np.argsort(exposures[t, valid], kind="stable")]
        out[t] = forward[t, order[-size:]].mean() - forward[t, order[:size]].mean()
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
            "ic_tstat": float(ic.mean() / ic_std * math.sqrt(len(ic))) if ic_std and ic_std > 0 else math.nan,
            "ic_hit_rate": float((ic > 0).mean()) if len(ic) else math.nan,
            "long_short_mean": float(spread.mean()) if len(spread) else math.nan,
            "long_short_annualised": float(spread.mean() * periods_per_year) if len(spread) else math.nan,
            "long_short_tstat": (float(spread.mean() / spread_std * math.sqrt(len(spread)))
                                 if spread_std and spread_std > 0 else math.nan),
        }


def evaluate_factor(name: str, exposures: np.ndarray, close: np.ndarray, times: np.ndarray,
                    horizon: int, quantiles: int = 5, min_assets: int = 5) -> FactorEvaluation:
    """Evaluate one factor on non-overlapping periods of ``horizon`` bars."""
    forward = forward_returns(close, horizon)
    rows = np.arange(0, len(close) - horizon, horizon)
    return FactorEvaluation(
        name=name,
        ic=rank_ic(exposures[rows], forward[rows], min_assets),
        spread=quantile_spread(exposures[rows], forward[rows], quantiles, min_assets),
        period_times=times[rows],
    )
