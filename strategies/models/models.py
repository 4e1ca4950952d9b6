"""The signal models behind one serving interface (``base.SignalModel``): the networks here,
the baselines that need no torch in ``strategies.models.baselines`` (re-exported).

Each can describe itself for a checkpoint: ``describe()`` (JSON-able settings) and
``tensors()`` (its numbers), and be rebuilt from both with ``build_model``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from strategies.models.base import ModelError, Prediction
from strategies.models.baselines import (
    EqualWeightModel,
    RidgeModel,
    TrailingICModel,
    factor_prediction,
)
from strategies.models.dataset import Normaliser
from strategies.models.networks import GATE_THRESHOLD, AssetLSTM, FactorWeightLSTM


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else the CPU.

    Raises
    ------
    ModelError
        ``cuda`` asked for where torch sees no GPU, or an unknown name.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: torch sees no CUDA device here (use auto or cpu)")
    if device not in ("cpu", "cuda"):
        raise ModelError(f"device must be auto, cpu or cuda, received {device!r}")
    return torch.device(device)


class FactorLSTMModel:
    """The paper's model: an LSTM over the factor-level feature history decides which factors
    to use (gates) and how to weight them (directions) for the next period."""

    kind = "lstm"

    def __init__(
        self,
        factors: tuple[str, ...],
        lookback: int,
        normaliser: Normaliser,
        network: FactorWeightLSTM,
        device: torch.device | None = None,
        version: str = "",
    ) -> None:
        self.factors = factors
        self.lookback = lookback
        self.normaliser = normaliser
        self.device = device or torch.device("cpu")
        self.network = network.to(self.device).eval()
        self.version = version or "lstm"

    def gates(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Direction and gate per factor for one window (or a batch of windows)."""
        x = torch.from_numpy(self.normaliser.apply(features)).to(self.device)
        with torch.inference_mode():
            direction, gate = self.network(x if x.dim() == 3 else x[None])
        return direction.cpu().numpy(), gate.cpu().numpy()

    def predict(self, features: np.ndarray, exposures: np.ndarray) -> Prediction:
        direction, gate = (a[0].astype(np.float64) for a in self.gates(features))
        keep = gate >= GATE_THRESHOLD
        if not keep.any():
            keep[int(np.argmax(gate))] = True  # never select nothing: the most confident one
        return factor_prediction(self.factors, np.where(keep, direction * gate, 0.0), exposures)

    def describe(self) -> dict[str, Any]:
        lstm = self.network.lstm
        return {"hidden": lstm.hidden_size, "layers": lstm.num_layers}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.network.state_dict().items()}


def asset_inputs(exposures: np.ndarray) -> np.ndarray:
    """(…, lookback, factors, assets) exposures as the asset LSTM reads them: (…, assets,
    lookback, factors), missing values zero."""
    moved = np.moveaxis(exposures, -1, -3)  # assets before lookback
    return np.nan_to_num(moved, nan=0.0).astype(np.float32)


class AssetLSTMModel:
    """One LSTM shared by every asset reads the asset's own exposure history and predicts its
    next-period return rank; the prediction is the score."""

    kind = "asset-lstm"

    def __init__(
        self,
        factors: tuple[str, ...],
        lookback: int,
        network: AssetLSTM,
        device: torch.device | None = None,
        version: str = "",
    ) -> None:
        self.factors = factors
        self.lookback = lookback
        self.device = device or torch.device("cpu")
        self.network = network.to(self.device).eval()
        self.version = version or "asset-lstm"

    def predict(self, features: np.ndarray, exposures: np.ndarray) -> Prediction:
        x = torch.from_numpy(asset_inputs(exposures)).to(self.device)
        with torch.inference_mode():
            scores = self.network(x[None])[0].cpu().numpy().astype(np.float64)
        scores[np.isnan(exposures[-1]).any(axis=0)] = math.nan  # not scorable now
        return Prediction(scores, None, self.factors)

    def describe(self) -> dict[str, Any]:
        lstm = self.network.lstm
        return {"hidden": lstm.hidden_size, "layers": lstm.num_layers}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.network.state_dict().items()}


def build_model(
    kind: str,
    factors: tuple[str, ...],
    lookback: int,
    settings: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    normaliser: Normaliser | None,
    device: torch.device,
    version: str,
):
    """Rebuild a model from its checkpoint parts (``describe`` / ``tensors``)."""
    n_features = 2 * len(factors) + 5
    if kind == "equal-weight":
        return EqualWeightModel(factors, version)
    if kind == "trailing-ic":
        return TrailingICModel(factors, lookback, version)
    if normaliser is None and kind in ("ridge", "lstm"):
        raise ModelError(f"a {kind} checkpoint needs its normalisation statistics")
    if kind == "ridge":
        assert normaliser is not None
        return RidgeModel(
            factors,
            lookback,
            normaliser,
            tensors["coef"].numpy(),
            tensors["intercept"].numpy(),
            version,
        )
    if kind == "lstm":
        assert normaliser is not None
        network = FactorWeightLSTM(n_features, len(factors), settings["hidden"], settings["layers"])
        network.load_state_dict(tensors)
        return FactorLSTMModel(factors, lookback, normaliser, network, device, version)
    if kind == "asset-lstm":
        network = AssetLSTM(len(factors), settings["hidden"], settings["layers"])
        network.load_state_dict(tensors)
        return AssetLSTMModel(factors, lookback, network, device, version)
    raise ModelError(f"unknown model kind {kind!r}")
