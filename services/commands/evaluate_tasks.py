"""The two kinds of task of ``deepfactor evaluate``'s grid, as module-level functions that a
process pool or Ray can ship: fit one walk-forward window of one model and seed, and replay one
strategy (seed, limits on or off) through the services.

A task returns plain numbers and models moved to the CPU, never a live service or a bus.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from engine.config import Config
from engine.data import Panel


@dataclass(frozen=True)
class FitTask:
    """Fit ``kind`` with ``seed`` on ``train_rows`` for the window that serves from ``cutoff``."""

    kind: str
    seed: int
    window: int  # 1-based, in time order
    cutoff: int
    train_rows: np.ndarray
    test_rows: np.ndarray


@dataclass(frozen=True)
class FitResult:
    kind: str
    seed: int
    window: int
    serves_from: np.datetime64
    model: Any
    out_of_sample_ic: np.ndarray  # rank IC per test row (NaN where there was none)


@dataclass(frozen=True)
class BacktestTask:
    """One replay: ``config`` is the strategy's whole config; ``schedule`` its fitted models."""

    strategy: str
    seed: int | None
    limits: bool
    config: Config
    schedule: list[tuple[np.datetime64, Any]] | None


@dataclass(frozen=True)
class RunSeries:
    """A replay's per-bar record, indexed by bar close time (UTC, ns).

    ``expected_var`` is the risk model's VaR of the book after the last rebalance, as of the
    bar (NaN where none); ``fees`` and ``traded`` (notional) are of the fills made on the bar.
    """

    strategy: str
    seed: int | None
    limits: bool
    times: np.ndarray
    equity: np.ndarray
    expected_var: np.ndarray
    fees: np.ndarray
    traded: np.ndarray
    factor_weights: pd.DataFrame  # per Signal: the weight of each factor (LSTM: its choice)
    risk_actions: dict[str, int]


def cpu_model(model: Any) -> Any:
    """``model`` with its network on the CPU, so that any process can load and serve it."""
    import torch

    network = getattr(model, "network", None)
    if network is not None and getattr(model, "device", None) != torch.device("cpu"):
        model.network = network.to("cpu")
        model.device = torch.device("cpu")
    return model


def fit_window(shared: tuple[Any, Any], task: FitTask) -> FitResult:
    """Fit one window (``shared`` is (PeriodData, TrainSettings)) and score it out of sample."""
    from strategies.models.training import fit, score_rows

    data, settings = shared
    model, _ = fit(task.kind, data, task.train_rows, dataclasses.replace(settings, seed=task.seed))
    model.version = f"{task.kind}-s{task.seed}-wf{task.window}"
    model = cpu_model(model)
    return FitResult(
        kind=task.kind,
        seed=task.seed,
        window=task.window,
        serves_from=data.times[task.cutoff],
        model=model,
        out_of_sample_ic=score_rows(model, data, task.test_rows),
    )


def _utc_ns(values: Any) -> np.ndarray:
    index = pd.DatetimeIndex(pd.to_datetime(list(values), utc=True))
    return index.tz_localize(None).to_numpy(dtype="datetime64[ns]")


def replay(panel: Panel, task: BacktestTask) -> RunSeries:
    """Replay ``panel`` through the services for one strategy; return its per-bar record."""
    import structlog

    from engine.events import Fill, PortfolioSnapshot, Signal
    from services.commands.backtest import Backtest
    from services.commands.report_data import bus_events, frames_from_events

    structlog.contextvars.bind_contextvars(strategy=task.strategy, seed=task.seed)
    backtest = Backtest(task.config, panel, schedule=task.schedule)
    summary = backtest.run()
    rows = backtest.services.recorder.rows
    stamps = sorted(rows)
    times = _utc_ns(stamps)
    equity = np.array([rows[t][0] for t in stamps], dtype=float)
    frames = frames_from_events(
        bus_events(backtest.bus, (Signal.TOPIC, PortfolioSnapshot.TOPIC, Fill.TOPIC))
    )
    index = pd.DatetimeIndex(times)
    risk = frames.risk["expected_var"].astype(float)
    risk.index = risk.index.tz_localize(None)
    expected = risk[~risk.index.duplicated(keep="last")].reindex(index, method="ffill")
    fills = frames.fills
    fills_index = fills.index.tz_localize(None)
    notional = pd.Series(
        (fills["quantity"] * fills["price"]).to_numpy(dtype=float), index=fills_index
    )
    fees = pd.Series(fills["fee"].to_numpy(dtype=float), index=fills_index)
    weights = frames.weights.copy()
    weights.index = weights.index.tz_localize(None)
    return RunSeries(
        strategy=task.strategy,
        seed=task.seed,
        limits=task.limits,
        times=times,
        equity=equity,
        expected_var=expected.to_numpy(dtype=float),
        fees=fees.groupby(level=0).sum().reindex(index, fill_value=0.0).to_numpy(dtype=float),
        traded=notional.groupby(level=0).sum().reindex(index, fill_value=0.0).to_numpy(dtype=float),
        factor_weights=weights,
        risk_actions=dict(summary["limits_acted"]),
    )
