"""A paper run's model at start: a model strategy whose registry has no active checkpoint gets
one trained on the bars before the replay (``[paper] start``), so the run serves a model
fitted only on what came before its first bar. An active checkpoint is served as it is; with
no history to learn from, the signal service serves its trailing-IC fallback and says why.
"""

from __future__ import annotations

import time

import structlog

from engine.config import Config
from engine.data import Panel
from engine.errors import DataError
from engine.progress import JobProgress
from services.commands.model_data import period_data
from services.commands.train import settings_of, training_record
from services.daemons.signal import CHECKPOINT_KINDS
from strategies.models import ModelError
from strategies.models.registry import ModelRegistry
from strategies.models.training import fit

log = structlog.get_logger("services.commands.model_start")


def ensure_model(config: Config, history: Panel) -> str | None:
    """Return the active version of the configured model strategy, training one on
    ``history`` first when there is none (None: not a model strategy, or nothing to train)."""
    kind = config.strategy.name
    if kind not in CHECKPOINT_KINDS:
        return None
    registry = ModelRegistry(config.model.registry)
    active = registry.active(kind)
    if active is not None:
        log.info("paper.model_active", model=kind, version=active, registry=str(registry.root))
        return active
    started = time.perf_counter()
    try:
        if history.n_bars == 0:
            raise DataError("no bars before [paper] start")
        data = period_data(config, history)
        rows = data.usable_before(data.n_periods - 1)
        settings = settings_of(config)
        with JobProgress("model_start", settings.epochs, "epoch", bar=False, model=kind) as epochs:
            model, report = fit(
                kind, data, rows, settings, lambda row: epochs.update(loss=row["loss"])
            )
    except (DataError, ModelError) as error:
        log.warning(
            "paper.model_not_trained",
            model=kind,
            reason=str(error),
            history_bars=history.n_bars,
            serves="the trailing-IC fallback",
        )
        return None
    version = registry.save(
        kind,
        model,
        training=training_record(data, rows, report.train_rows, history.source, settings),
        metrics={"validation_ic": report.validation_ic, "best_epoch": report.best_epoch},
        activate=True,
    )
    log.info(
        "paper.model_trained",
        model=kind,
        version=version,
        samples=int(report.train_rows),
        trained_until=str(data.times[rows[-1]])[:19],
        validation_ic=round(report.validation_ic, 4),
        seconds=round(time.perf_counter() - started, 2),
    )
    return version
