"""The serving interface every signal model has, and what a prediction holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engine.errors import DeepfactorError

# Factor-weight models first; "asset-lstm" scores assets directly.
MODEL_KINDS = ("lstm", "asset-lstm", "ridge", "trailing-ic", "equal-weight")


class ModelError(DeepfactorError):
    """A model cannot be trained, saved, loaded or served; the message says which and why."""


@dataclass(frozen=True)
class Prediction:
    """One decision: per-asset scores (NaN: not scorable) and, for a factor-weight model, the
    weight of each factor (zero for one not selected) and the names of those selected."""

    scores: np.ndarray
    factor_weights: np.ndarray | None
    selected: tuple[str, ...]


class SignalModel(Protocol):
    """What the signal service serves.

    ``features`` is the last ``lookback`` periods of ``feature_names(factors)`` rows, oldest
    first, raw (each model normalises with its own training statistics); ``exposures`` is
    the same periods' exposures, (lookback, factors, assets), NaN where missing. The last row
    of each is the decision period.
    """

    kind: str
    version: str
    factors: tuple[str, ...]
    lookback: int

    def predict(self, features: np.ndarray, exposures: np.ndarray) -> Prediction: ...


def composite_scores(weights: np.ndarray, exposures: np.ndarray) -> np.ndarray:
    """Per-asset score: the weighted sum of the factors with a non-zero weight, each column
    z-scored. An asset missing one of those factors gets NaN (never scored on fewer)."""
    from strategies.preprocessing import zscore

    used = np.flatnonzero(weights != 0.0)
    if len(used) == 0:
        return np.full(exposures.shape[1], np.nan)
    return weights[used] @ zscore(exposures[used])


def unit_gross(weights: np.ndarray) -> np.ndarray:
    """``weights`` scaled to a gross weight of 1 (all zero stays zero)."""
    total = float(np.abs(weights).sum())
    return weights / total if total > 0 else weights
