"""``deepfactor train``: walk-forward training of a signal model on a data file, its
out-of-sample IC per window next to the baselines', and a checkpoint in the model registry.

The data are the FactorSnapshots the factor service publishes over the file
(``services.commands.model_data``), one period per snapshot. The walk-forward refits every
``[model] retrain_every`` periods from ``min_train`` on and scores each fit only on the
periods up to the next refit. Then the model is fitted once more on every period whose label
is known and saved; it becomes the active model of its strategy when there is none yet, or
when its validation IC beats the active one's on the same periods (``services.commands.challenge``;
said either way).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import structlog
from tqdm import tqdm

from engine.config import Config
from engine.data import Panel
from engine.progress import JobProgress
from services.commands.challenge import challenge
from services.commands.model_data import period_data
from services.daemons.factor_update import factor_label
from strategies.models import MODEL_KINDS, ModelError
from strategies.models.dataset import PeriodData
from strategies.models.registry import ModelRegistry
from strategies.models.training import TrainSettings, fit, walk_forward

log = structlog.get_logger("services.commands.train")
TRAINABLE = ("lstm", "asset-lstm", "ridge")
BASELINES = ("trailing-ic", "equal-weight", "ridge")
REPORT_FILE = "train.json"


def settings_of(config: Config, device: str | None = None) -> TrainSettings:
    """The ``TrainSettings`` of ``config``'s [model] section."""
    m = config.model
    return TrainSettings(
        lookback=m.lookback,
        hidden=m.hidden,
        layers=m.layers,
        epochs=m.epochs,
        batch_size=m.batch_size,
        learning_rate=m.learning_rate,
        weight_decay=m.weight_decay,
        patience=m.patience,
        validation_fraction=m.validation_fraction,
        objective=m.objective,
        gate_penalty=m.gate_penalty,
        risk_aversion=m.risk_aversion,
        ridge_alpha=m.ridge_alpha,
        seed=m.seed,
        device=device or m.device,
        min_train=m.min_train,
        retrain_every=m.retrain_every,
        window=m.window,
        train_periods=m.train_periods,
        factor_weights=tuple((factor_label(f), f.weight) for f in config.strategy.factors),
    )


def training_record(
    data: PeriodData, rows: np.ndarray, samples: int, source: str, settings: TrainSettings
) -> dict[str, Any]:
    """What a checkpoint's ``meta.json`` says of its training: span, samples, data, settings."""
    return {
        "start": str(data.times[rows[0]])[:19],
        "end": str(data.times[rows[-1]])[:19],
        "samples": int(samples),
        "assets": len(data.symbols),
        "data": source,
        "data_hash": data.digest(),
        "settings": settings.__dict__,
    }


@dataclass
class TrainResult:
    """What a ``deepfactor train`` run produced."""

    kind: str
    version: str
    activated: bool
    report: dict[str, Any]


class _EpochBar:
    """One progress bar per fit: epoch, loss and validation IC."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.bar: tqdm | None = None

    def open(self, description: str, epochs: int) -> None:
        self.close()
        if self.enabled:
            self.bar = tqdm(total=epochs, desc=description, file=self.stream, leave=False)

    def __call__(self, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(
                loss=f"{row['loss']:.4f}", val_ic=f"{row['validation_ic']:.4f}", refresh=False
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _table(windows: list[dict[str, Any]], kinds: tuple[str, ...]) -> str:
    head = f"{'window':>6}  {'test from':<19}  {'test to':<19}  {'samples':>7}"
    head += "".join(f"  {kind:>12}" for kind in kinds)
    lines = [head]
    for w in windows:
        cells = "".join(
            f"  {w[k]:>12.4f}" if w.get(k) is not None else f"  {'n/a':>12}" for k in kinds
        )
        lines.append(
            f"{w['window']:>6}  {w['test_start']:<19}  {w['test_end']:<19}  "
            f"{w['train_samples']:>7}{cells}"
        )
    return "\n".join(lines)


def run_train(
    config: Config,
    panel: Panel,
    out_dir: Path,
    *,
    kind: str,
    device: str | None = None,
    baselines: tuple[str, ...] = BASELINES,
    progress: bool = True,
    stream: TextIO = sys.stderr,
) -> TrainResult:
    """Walk-forward ``kind`` and ``baselines`` on ``panel``; save and maybe activate the final
    model of ``kind``; write ``train.json`` into ``out_dir``; return what happened.

    Raises
    ------
    ModelError
        A kind that cannot be trained, too little data for the walk-forward.
    DataError
        Too few factor snapshots over the panel.
    """
    if kind not in TRAINABLE:
        raise ModelError(f"--model must be one of {list(TRAINABLE)}, received {kind!r}")
    unknown = [b for b in baselines if b not in MODEL_KINDS]
    if unknown:
        raise ModelError(f"--baselines: unknown models {unknown}; known: {list(MODEL_KINDS)}")
    settings = settings_of(config, device)
    data = period_data(config, panel)
    kinds = tuple(dict.fromkeys((kind, *baselines)))
    bar = _EpochBar(stream, progress)
    epochs = JobProgress("train", None, "epoch", stream=stream, bar=False, model=kind)
    log.info(
        "train.started",
        model=kind,
        periods=data.n_periods,
        assets=len(data.symbols),
        factors=list(data.factors),
        device=settings.device,
    )

    def on_progress(row: dict[str, Any]) -> None:
        if row["epoch"] == 1:
            bar.open(f"{kind} fit", settings.epochs)
        bar(row)
        epochs.update(loss=row["loss"])

    def on_window(entry: dict[str, Any]) -> None:
        bar.close()
        log.info("train.window", **{k: v for k, v in entry.items() if v is not None})

    try:
        result = walk_forward(data, kinds, settings, on_progress, on_window)
        final_rows = data.usable_before(data.n_periods - 1)
        bar.open(f"{kind} final", settings.epochs)

        def on_final(row: dict[str, Any]) -> None:
            bar(row)
            epochs.update(loss=row["loss"])

        model, fit_report = fit(kind, data, final_rows, settings, on_final)
    finally:
        bar.close()
    summary = result.summary()
    registry = ModelRegistry(config.model.registry)
    verdict = challenge(registry, kind, model, data, fit_report.validation, "cpu")
    better = verdict.challenger_wins
    training = training_record(data, final_rows, fit_report.train_rows, panel.source, settings)
    metrics = {
        "validation_ic": fit_report.validation_ic,
        "best_epoch": fit_report.best_epoch,
        "epochs": fit_report.epochs,
        "walk_forward": summary,
    }
    period = {
        "compute_on": config.strategy.compute_on,
        "schedule": config.schedule.cron or config.schedule.interval,
        "timeframe": panel.timeframe_label,
    }
    version = registry.save(
        kind, model, training=training, metrics=metrics, period=period, activate=better
    )
    log.info(
        "train.saved",
        model=kind,
        version=version,
        registry=str(registry.root),
        activated=better,
        reason=verdict.reason,
        validation_ic=round(verdict.challenger_ic, 4),
        active=verdict.active,
        active_validation_ic=None if math.isnan(verdict.active_ic) else round(verdict.active_ic, 4),
    )
    report = {
        "model": kind,
        "version": version,
        "activated": better,
        "replaced": verdict.active if better else None,
        "verdict": verdict.reason,
        "validation_ic": verdict.challenger_ic,
        "active_validation_ic": verdict.active_ic,
        "periods": data.n_periods,
        "assets": len(data.symbols),
        "factors": list(data.factors),
        "windows": result.windows,
        "out_of_sample": summary,
        "table": _table(result.windows, kinds),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return TrainResult(kind, version, better, report)


def print_report(result: TrainResult, out_dir: Path) -> None:
    """The run's table and verdict, for a person at a terminal."""
    report = result.report
    print(f"train: {result.kind} on {report['periods']} periods x {report['assets']} assets")
    print(report["table"])
    print("out of sample (all windows):")
    for kind, figures in report["out_of_sample"].items():
        print(
            f"  {kind:<13} mean IC {figures['mean_ic']:+.4f}  t {figures['t_stat']:+.2f}  "
            f"({figures['periods']} periods)"
        )
    verdict = (
        "active" if result.activated else "saved, not activated: the active one validates better"
    )
    print(f"checkpoint: {result.version} ({verdict})")
    print(f"report: {out_dir / REPORT_FILE}")
