"""Training: one fit on a set of rows, and the walk-forward loop that refits every
``retrain_every`` periods and scores each model only on the periods after its fit.

No sample whose label lies after the decision date: a fit at row ``c`` learns only from rows
whose label time is at or before ``times[c]`` (``PeriodData.usable_before``); its validation
rows are the last ``validation_fraction`` of those, after a one-row gap, and early stopping
watches them. Tensors are built once per fit (whole windows, on the device) and batches are
index slices of them: no per-sample Python on the training path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog
import torch
from sklearn.linear_model import Ridge

from strategies.evaluation import rank_ic
from strategies.models.base import MODEL_KINDS, ModelError
from strategies.models.dataset import Normaliser, PeriodData, rank_labels, windows
from strategies.models.features import ic_columns
from strategies.models.models import (
    AssetLSTMModel,
    EqualWeightModel,
    FactorLSTMModel,
    RidgeModel,
    TrailingICModel,
    asset_inputs,
    resolve_device,
)
from strategies.models.networks import (
    OBJECTIVES,
    AssetLSTM,
    FactorWeightLSTM,
    composite,
    factor_weights,
    ic_loss,
    mean_variance_loss,
)

log = structlog.get_logger("strategies.models.training")
MIN_ASSETS = 5
# Fewer usable samples than this and a refit point is skipped: a fit on a handful of rows (the
# early years of a market where few assets trade yet) learns noise, or cannot split at all.
MIN_FIT_SAMPLES = 20


@dataclass(frozen=True)
class TrainSettings:
    """How to fit (see ``[model]`` in the config for the keys and defaults)."""

    lookback: int = 20
    hidden: int = 32
    layers: int = 1
    epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    patience: int = 8
    validation_fraction: float = 0.2
    objective: str = "ic"
    gate_penalty: float = 1e-3
    risk_aversion: float = 5.0
    ridge_alpha: float = 10.0
    seed: int = 0
    device: str = "auto"
    # Walk-forward.
    min_train: int = 120
    retrain_every: int = 20
    window: str = "expanding"
    train_periods: int = 0  # rolling window length (0: expanding)
    # The equal-weight baseline's weight per factor label (absent: 1): the configured ones.
    factor_weights: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ModelError(f"objective must be one of {OBJECTIVES}, received {self.objective!r}")
        if self.window not in ("expanding", "rolling"):
            raise ModelError(f"window must be expanding or rolling, received {self.window!r}")
        if self.lookback < 1 or self.retrain_every < 1:
            raise ModelError("lookback >= 1 and retrain_every >= 1 are needed")
        if self.min_train < self.lookback + 10:
            raise ModelError(
                f"[model] min_train ({self.min_train}) must exceed lookback ({self.lookback}) "
                "by at least 10 periods: the first fit needs samples with a full history"
            )


@dataclass
class FitReport:
    """What one fit did."""

    kind: str
    train_rows: int
    validation_rows: int
    epochs: int = 0
    best_epoch: int = 0
    validation_ic: float = math.nan
    validation_loss: float = math.nan
    samples_per_s: float = math.nan
    history: list[dict[str, float]] = field(default_factory=list)
    # The rows validated on: where a challenger and the active model are compared.
    validation: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


Progress = Callable[[dict[str, Any]], None]


def _split(rows: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    n_validation = max(1, int(round(len(rows) * fraction)))
    if len(rows) - n_validation - 1 < 5:
        raise ModelError(f"{len(rows)} training samples are too few to fit and validate")
    return rows[: -n_validation - 1], rows[-n_validation:]  # a one-row gap between


class _Tensors:
    """A fit's inputs, built once for every row that can be a sample."""

    def __init__(self, data: PeriodData, lookback: int, normaliser: Normaliser, device):
        self.device = device
        self.lookback = lookback
        features = normaliser.apply(data.features)
        rows = np.arange(data.n_periods)
        self.rows = rows[rows >= lookback - 1]
        exposures = np.nan_to_num(data.exposures, nan=0.0)
        self.features = torch.from_numpy(windows(features, self.rows, lookback)).to(device)
        self.exposures = torch.from_numpy(exposures[self.rows]).to(device)
        valid = np.isfinite(data.exposures[self.rows]).all(axis=1) & np.isfinite(
            data.returns[self.rows]
        )
        self.mask = torch.from_numpy(valid).to(device)
        self.labels = torch.from_numpy(np.nan_to_num(rank_labels(data.returns[self.rows]))).to(
            device
        )
        self.returns = torch.from_numpy(np.nan_to_num(data.returns[self.rows])).to(device)
        self._asset_windows: torch.Tensor | None = None
        self._data = data

    def position(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(rows) - (self.lookback - 1)).to(self.device)

    def asset_windows(self) -> torch.Tensor:
        if self._asset_windows is None:
            stacked = windows(self._data.exposures, self.rows, self.lookback)  # (S, L, F, N)
            self._asset_windows = torch.from_numpy(asset_inputs(stacked)).to(self.device)
        return self._asset_windows


def _loss(settings: TrainSettings, scores, tensors: _Tensors, index) -> torch.Tensor:
    mask = tensors.mask[index]
    if settings.objective == "ic":
        return ic_loss(scores, tensors.labels[index], mask)
    return mean_variance_loss(scores, tensors.returns[index], mask, settings.risk_aversion)


def _fit_network(
    kind: str,
    data: PeriodData,
    rows: np.ndarray,
    settings: TrainSettings,
    progress: Progress | None,
) -> tuple[Any, FitReport]:
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    train, validation = _split(rows, settings.validation_fraction)
    normaliser = Normaliser.fit(data.features[train])
    tensors = _Tensors(data, settings.lookback, normaliser, device)
    n_factors, n_features = len(data.factors), data.features.shape[1]
    if kind == "lstm":
        network: torch.nn.Module = FactorWeightLSTM(
            n_features, n_factors, settings.hidden, settings.layers
        )
    else:
        network = AssetLSTM(n_factors, settings.hidden, settings.layers)
    network = network.to(device)
    optimiser = torch.optim.AdamW(
        network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )

    def scores_of(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if kind == "lstm":
            direction, gate = network(tensors.features[index])
            return composite(factor_weights(direction, gate), tensors.exposures[index]), gate
        return network(tensors.asset_windows()[index]), None

    train_index = tensors.position(train)
    validation_index = tensors.position(validation)
    report = FitReport(kind, len(train), len(validation), validation=validation)
    best_state, best_loss, waited = None, math.inf, 0
    seen, started = 0, time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        network.train()
        order = train_index[torch.randperm(len(train_index), generator=generator).to(device)]
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            scores, gate = scores_of(batch)
            loss = _loss(settings, scores, tensors, batch)
            if gate is not None:
                loss = loss + settings.gate_penalty * gate.mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
            seen += len(batch)
        network.eval()
        with torch.inference_mode():
            scores, _ = scores_of(validation_index)
            validation_loss = float(_loss(settings, scores, tensors, validation_index))
            validation_ic = -float(
                ic_loss(scores, tensors.labels[validation_index], tensors.mask[validation_index])
            )
        row = {
            "epoch": epoch,
            "loss": total / len(order),
            "validation_loss": validation_loss,
            "validation_ic": validation_ic,
        }
        report.history.append(row)
        if progress is not None:
            progress(row)
        if validation_loss < best_loss - 1e-6:
            best_loss, waited = validation_loss, 0
            best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            report.best_epoch, report.validation_ic = epoch, validation_ic
            report.validation_loss = validation_loss
        else:
            waited += 1
            if waited >= settings.patience:
                break
    report.epochs = epoch
    report.samples_per_s = seen / max(time.perf_counter() - started, 1e-9)
    assert best_state is not None
    network.load_state_dict(best_state)
    network.eval()
    if kind == "lstm":
        model: Any = FactorLSTMModel(
            data.factors,
            settings.lookback,
            normaliser,
            network,
            device,  # type: ignore[arg-type]
        )
    else:
        model = AssetLSTMModel(data.factors, settings.lookback, network, device)  # type: ignore[arg-type]
    return model, report


def _fit_ridge(
    data: PeriodData, rows: np.ndarray, settings: TrainSettings
) -> tuple[RidgeModel, FitReport]:
    train, validation = _split(rows, settings.validation_fraction)
    normaliser = Normaliser.fit(data.features[train])
    features = normaliser.apply(data.features)
    ic = ic_columns(data.factors)
    # The label of row t: the factor ICs realised over t -> t+1, reported in row t+1.
    x = windows(features, train, settings.lookback).reshape(len(train), -1)
    y = data.features[train + 1, ic]
    ridge = Ridge(alpha=settings.ridge_alpha).fit(x, y)
    model = RidgeModel(
        data.factors,
        settings.lookback,
        normaliser,
        np.asarray(ridge.coef_, dtype=np.float64).reshape(len(data.factors), -1),
        np.asarray(ridge.intercept_, dtype=np.float64).reshape(len(data.factors)),
    )
    report = FitReport(
        "ridge", len(train), len(validation), epochs=1, best_epoch=1, validation=validation
    )
    report.validation_ic = float(np.nanmean(score_rows(model, data, validation)))
    return model, report


def usable_rows(data: PeriodData, rows: np.ndarray, settings: TrainSettings) -> np.ndarray:
    """The rows of ``rows`` a fit learns from: a full lookback behind them, and at least
    ``MIN_ASSETS`` assets scorable and labelled (the factors' warm-up teaches nothing)."""
    rows = np.asarray(rows)
    rows = rows[rows >= settings.lookback - 1]
    scorable = np.isfinite(data.exposures[rows]).all(axis=1) & np.isfinite(data.returns[rows])
    return rows[scorable.sum(axis=1) >= MIN_ASSETS]


def fit(
    kind: str,
    data: PeriodData,
    rows: np.ndarray,
    settings: TrainSettings,
    progress: Progress | None = None,
):
    """Fit a model of ``kind`` on ``rows`` of ``data`` (each row's label must be known by the
    caller's decision time); return (model, FitReport)."""
    if kind not in MODEL_KINDS:
        raise ModelError(f"model kind must be one of {MODEL_KINDS}, received {kind!r}")
    rows = usable_rows(data, rows, settings)
    if kind == "equal-weight":
        configured = dict(settings.factor_weights)
        weights = np.array([configured.get(f, 1.0) for f in data.factors])
        return EqualWeightModel(data.factors, weights=weights), FitReport(kind, len(rows), 0)
    if kind == "trailing-ic":
        return TrailingICModel(data.factors, settings.lookback), FitReport(kind, 0, 0)
    if kind == "ridge":
        return _fit_ridge(data, rows, settings)
    return _fit_network(kind, data, rows, settings, progress)


def score_rows(model, data: PeriodData, rows: np.ndarray) -> np.ndarray:
    """The rank IC of ``model``'s scores with the realised returns, per row of ``rows``."""
    scores = np.full((len(rows), len(data.symbols)), np.nan)
    for i, t in enumerate(rows):
        window = slice(t - model.lookback + 1, t + 1)
        scores[i] = model.predict(data.features[window], data.exposures[window]).scores
    return rank_ic(scores, data.returns[rows].astype(np.float64))


@dataclass
class Window:
    """One walk-forward step: fit at ``cutoff`` on ``train_rows``, score on ``test_rows``."""

    cutoff: int
    train_rows: np.ndarray
    test_rows: np.ndarray


def walk_forward_windows(data: PeriodData, settings: TrainSettings) -> list[Window]:
    """Refit points every ``retrain_every`` periods from ``min_train`` on; each window's test
    rows run to the next refit (those with a label). A refit point with fewer than
    ``MIN_FIT_SAMPLES`` usable training samples is skipped (its periods go unscored)."""
    last_labelled = data.n_periods - 2
    out = []
    for cutoff in range(settings.min_train, last_labelled + 1, settings.retrain_every):
        train = data.usable_before(cutoff)
        train = train[train >= settings.lookback - 1]
        if settings.window == "rolling" and settings.train_periods:
            train = train[-settings.train_periods :]
        if len(usable_rows(data, train, settings)) < MIN_FIT_SAMPLES:
            continue
        test = np.arange(cutoff, min(cutoff + settings.retrain_every, last_labelled + 1))
        out.append(Window(cutoff, train, test))
    if not out:
        raise ModelError(
            f"{data.n_periods} periods leave no walk-forward window after min_train "
            f"{settings.min_train} with {MIN_FIT_SAMPLES} usable samples (periods where at "
            f"least {MIN_ASSETS} assets have every factor and a label) before it"
        )
    return out


@dataclass
class WalkForwardResult:
    """Out-of-sample rank IC per window and overall, per model kind."""

    kinds: tuple[str, ...]
    windows: list[dict[str, Any]]
    ic: dict[str, np.ndarray]  # kind -> OOS IC per test row (concatenated)
    weights: dict[str, np.ndarray]  # factor-weight kinds -> (test rows, F)
    test_rows: np.ndarray
    models: dict[str, Any]  # kind -> the last window's model
    # kind -> (decision time from which it serves, model), one per window, in time order:
    # what a backtest serves so that every period is scored by a model fitted before it.
    schedule: dict[str, list[tuple[np.datetime64, Any]]] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        return {kind: ic_summary(self.ic[kind]) for kind in self.kinds}


def ic_summary(ic: np.ndarray) -> dict[str, float]:
    """Mean rank IC, its t-statistic and how many periods it is over."""
    values = ic[np.isfinite(ic)]
    n = len(values)
    if n < 2:
        return {"mean_ic": math.nan, "t_stat": math.nan, "periods": n}
    std = float(values.std(ddof=1))
    mean = float(values.mean())
    return {
        "mean_ic": mean,
        "t_stat": mean / std * math.sqrt(n) if std > 0 else math.nan,
        "periods": n,
    }


def walk_forward(
    data: PeriodData,
    kinds: tuple[str, ...],
    settings: TrainSettings,
    progress: Progress | None = None,
    on_window: Callable[[dict[str, Any]], None] | None = None,
) -> WalkForwardResult:
    """Fit every kind at each refit point and score it on the periods up to the next one."""
    plan = walk_forward_windows(data, settings)
    ic = {kind: [] for kind in kinds}
    weights: dict[str, list[np.ndarray]] = {kind: [] for kind in kinds}
    rows_done: list[np.ndarray] = []
    reports: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    schedule: dict[str, list[tuple[np.datetime64, Any]]] = {kind: [] for kind in kinds}
    for number, window in enumerate(plan, 1):
        entry: dict[str, Any] = {
            "window": number,
            "train_start": str(data.times[window.train_rows[0]])[:19],
            "train_end": str(data.times[window.train_rows[-1]])[:19],
            "test_start": str(data.times[window.test_rows[0]])[:19],
            "test_end": str(data.times[window.test_rows[-1]])[:19],
            "train_samples": int(len(usable_rows(data, window.train_rows, settings))),
            "test_periods": int(len(window.test_rows)),
        }
        for kind in kinds:
            model, report = fit(kind, data, window.train_rows, settings, progress)
            if report.validation_rows:
                entry[f"{kind}:fitted"] = report.train_rows
                entry[f"{kind}:validated"] = report.validation_rows
                entry[f"{kind}:best_epoch"] = report.best_epoch
            model.version = f"{kind}-wf{number}"
            models[kind] = model
            schedule[kind].append((data.times[window.cutoff], model))
            window_ic = score_rows(model, data, window.test_rows)
            ic[kind].append(window_ic)
            entry[kind] = float(np.nanmean(window_ic)) if np.isfinite(window_ic).any() else None
            if kind != "asset-lstm":
                weights[kind].append(
                    np.stack(
                        [
                            model.predict(
                                data.features[t - model.lookback + 1 : t + 1],
                                data.exposures[t - model.lookback + 1 : t + 1],
                            ).factor_weights
                            for t in window.test_rows
                        ]
                    )
                )
        rows_done.append(window.test_rows)
        reports.append(entry)
        if on_window is not None:
            on_window(entry)
    return WalkForwardResult(
        kinds,
        reports,
        {kind: np.concatenate(values) for kind, values in ic.items()},
        {kind: np.concatenate(values) for kind, values in weights.items() if values},
        np.concatenate(rows_done),
        models,
        schedule,
    )
