"""The signal models that need no torch: equal weights, trailing IC and ridge.

Kept apart from the networks (``strategies.models.models``) so that the signal service and
every process that builds it serve and fall back to these without loading torch; a ridge
checkpoint's tensors are converted with torch only when one is saved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from strategies.models.base import Prediction, composite_scores, unit_gross
from strategies.models.dataset import Normaliser
from strategies.models.features import ic_columns

if TYPE_CHECKING:
    import torch


def factor_prediction(
    factors: tuple[str, ...], weights: np.ndarray, exposures: np.ndarray
) -> Prediction:
    """The prediction of a factor-weight model: ``weights`` (NaN read as 0) at unit gross,
    the factors they select, and the composite scores of the last period's ``exposures``."""
    weights = unit_gross(np.where(np.isfinite(weights), weights, 0.0))
    selected = tuple(f for f, w in zip(factors, weights) if w != 0.0)
    return Prediction(composite_scores(weights, exposures[-1]), weights, selected)


class EqualWeightModel:
    """Fixed factor weights: the classical multi-factor baseline. Equal unless ``weights``
    (one per factor, the configured ``[[strategy.factors]] weight``, signs included) says
    otherwise: what the signal service's ``equal-weight`` strategy serves."""

    kind = "equal-weight"
    lookback = 1

    def __init__(
        self,
        factors: tuple[str, ...],
        version: str = "equal-weight",
        weights: np.ndarray | None = None,
    ) -> None:
        self.factors = factors
        self.version = version
        self.weights = np.ones(len(factors)) if weights is None else np.asarray(weights, float)

    def predict(self, features: np.ndarray, exposures: np.ndarray) -> Prediction:
        return factor_prediction(self.factors, self.weights, exposures)

    def describe(self) -> dict[str, Any]:
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}


class TrailingICModel:
    """Each factor weighs its mean realised rank IC over the last ``lookback`` periods (sign
    included): what worked lately gets the weight."""

    kind = "trailing-ic"

    def __init__(self, factors: tuple[str, ...], lookback: int, version: str = "") -> None:
        self.factors = factors
        self.lookback = lookback
        self.version = version or f"trailing-ic-{lookback}"

    def predict(self, features: np.ndarray, exposures: np.ndarray) -> Prediction:
        ic = features[:, ic_columns(self.factors)].mean(axis=0)
        if not np.any(ic):
            ic = np.ones(len(self.factors))  # no evidence yet: equal weights
        return factor_prediction(self.factors, ic, exposures)

    def describe(self) -> dict[str, Any]:
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}


class RidgeModel:
    """A linear model on the LSTM's inputs: ridge regression of next period's factor ICs on
    the normalised feature window (flattened); the predicted ICs are the weights."""

    kind = "ridge"

    def __init__(
        self,
        factors: tuple[str, ...],
        lookback: int,
        normaliser: Normaliser,
        coef: np.ndarray,
        intercept: np.ndarray,
        version: str = "",
    ) -> None:
        self.factors = factors
        self.lookback = lookback
        self.normaliser = normaliser
        self.coef = coef  # (F, lookback * K)
        self.intercept = intercept  # (F,)
        self.version = version or "ridge"

    def predict(self, features: np.ndarray, exposures: np.ndarray) -> Prediction:
        x = self.normaliser.apply(features).reshape(-1).astype(np.float64)
        return factor_prediction(self.factors, self.coef @ x + self.intercept, exposures)

    def describe(self) -> dict[str, Any]:
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        import torch  # only a checkpoint being saved needs it (the registry saves with torch)

        return {
            "coef": torch.from_numpy(self.coef),
            "intercept": torch.from_numpy(self.intercept),
        }
