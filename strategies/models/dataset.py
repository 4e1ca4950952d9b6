"""Training data: one row per period (per FactorSnapshot), aligned on one symbol universe.

A period's label is the return of each asset from that snapshot's close to the next one's:
known only at the next snapshot's time (``label_times``). Walk-forward training may use a
period as a training sample only once its label time has passed (``usable_before``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from engine.events import FactorSnapshot
from strategies.models.base import ModelError
from strategies.models.features import feature_names, snapshot_features


@dataclass(frozen=True)
class PeriodData:
    """Everything the models learn from.

    ``features`` (T, K) raw feature rows; ``exposures`` (T, F, N) float32, NaN where missing;
    ``returns`` (T, N) the return from period t to t+1 (NaN unknown, the last row all NaN);
    ``times`` (T,) the decision times (snapshot ``asof``) and ``label_times`` (T,) when each
    row's label is known (the next decision time; NaT for the last row).
    """

    times: np.ndarray
    label_times: np.ndarray
    symbols: tuple[str, ...]
    factors: tuple[str, ...]
    features: np.ndarray
    exposures: np.ndarray
    returns: np.ndarray

    @property
    def n_periods(self) -> int:
        return len(self.times)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return feature_names(self.factors)

    def digest(self) -> str:
        """A hash of the numbers (what a checkpoint records as its data hash)."""
        h = hashlib.sha256()
        for array in (self.times, self.features, self.exposures, self.returns):
            h.update(np.ascontiguousarray(array).tobytes())
        h.update("|".join(self.symbols + self.factors).encode())
        return h.hexdigest()[:16]

    def usable_before(self, cutoff: int) -> np.ndarray:
        """Rows whose label is known at the decision time of row ``cutoff``: a model trained
        at ``times[cutoff]`` may learn from these and from nothing later."""
        known = self.label_times[:cutoff] <= self.times[cutoff]
        return np.flatnonzero(known)


def utc64(moment: datetime) -> np.datetime64:
    """A tz-aware datetime as a naive UTC ``datetime64[ns]`` (the instant, whatever offset)."""
    return np.datetime64(moment.astimezone(UTC).replace(tzinfo=None), "ns")


def build_period_data(
    snapshots: Sequence[FactorSnapshot], symbols: Sequence[str], closes: np.ndarray
) -> PeriodData:
    """Build ``PeriodData`` from consecutive snapshots and the closes of ``symbols`` at each
    snapshot's ``asof`` (``closes`` shaped (T, N); NaN where an asset has no price yet).

    Raises
    ------
    ModelError
        Fewer than 3 snapshots, snapshots of different factor sets, or mis-shaped closes.
    """
    if len(snapshots) < 3:
        raise ModelError(f"training needs at least 3 factor snapshots, received {len(snapshots)}")
    factors = snapshots[0].factor_names
    for snapshot in snapshots:
        if snapshot.factor_names != factors:
            raise ModelError(
                f"the snapshot at {snapshot.asof.isoformat()} has factors "
                f"{list(snapshot.factor_names)}, the first one {list(factors)}"
            )
    symbols = tuple(symbols)
    closes = np.asarray(closes, dtype=np.float64)
    if closes.shape != (len(snapshots), len(symbols)):
        raise ModelError(
            f"closes are shaped {closes.shape}, expected {(len(snapshots), len(symbols))}"
        )
    column = {s: i for i, s in enumerate(symbols)}
    exposures = np.full((len(snapshots), len(factors), len(symbols)), np.nan, dtype=np.float32)
    for t, snapshot in enumerate(snapshots):
        unknown = [s for s in snapshot.symbols if s not in column]
        if unknown:
            raise ModelError(
                f"the snapshot at {snapshot.asof.isoformat()} has symbols {unknown} that are not "
                "in the universe the closes are given for"
            )
        where = [column[s] for s in snapshot.symbols]
        values = np.array(snapshot.exposures, dtype=np.float64)  # None -> nan
        exposures[t][:, where] = values
    with np.errstate(invalid="ignore", divide="ignore"):
        returns = closes[1:] / closes[:-1] - 1.0
    returns = np.vstack([returns, np.full((1, len(symbols)), np.nan)]).astype(np.float32)
    times = np.array([utc64(s.asof) for s in snapshots])
    label_times = np.concatenate([times[1:], np.array([np.datetime64("NaT", "ns")])])
    features = np.stack([snapshot_features(s, factors) for s in snapshots])
    return PeriodData(times, label_times, symbols, factors, features, exposures, returns)


def rank_labels(returns: np.ndarray) -> np.ndarray:
    """Cross-sectional ranks of ``returns`` (T, N) scaled to [-0.5, 0.5] (NaN stays NaN): the
    label a rank-IC objective is trained against."""
    out = np.full(returns.shape, np.nan, dtype=np.float32)
    for t in range(len(returns)):
        valid = np.flatnonzero(np.isfinite(returns[t]))
        if len(valid) < 2:
            continue
        order = np.argsort(np.argsort(returns[t, valid], kind="stable"), kind="stable")
        out[t, valid] = order / (len(valid) - 1) - 0.5
    return out


@dataclass(frozen=True)
class Normaliser:
    """Feature standardisation fitted on training rows only (kept in the checkpoint)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray) -> Normaliser:
        mean = features.mean(axis=0)
        std = features.std(axis=0)
        return cls(mean, np.where(std > 1e-12, std, 1.0))

    def apply(self, features: np.ndarray) -> np.ndarray:
        return np.clip((features - self.mean) / self.std, -5.0, 5.0).astype(np.float32)


def windows(values: np.ndarray, rows: np.ndarray, lookback: int) -> np.ndarray:
    """``values[t - lookback + 1 : t + 1]`` for each t of ``rows`` (each >= lookback - 1),
    stacked: (len(rows), lookback, ...). One fancy index, no per-sample Python."""
    offsets = np.arange(-lookback + 1, 1)
    return values[np.asarray(rows)[:, None] + offsets[None, :]]


def check_factors(expected: Sequence[str], found: Sequence[str], where: str) -> None:
    """Refuse a factor set that is not the one a model was trained on (order included)."""
    if tuple(expected) != tuple(found):
        missing = [f for f in expected if f not in found]
        extra = [f for f in found if f not in expected]
        detail = (
            f"missing {missing}, not trained on {extra}"
            if missing or extra
            else "the same factors in another order"
        )
        raise ModelError(
            f"{where} was trained on factors {list(expected)}; the live factor set is "
            f"{list(found)} ({detail})"
        )
