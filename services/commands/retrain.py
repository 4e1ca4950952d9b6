"""``deepfactor retrain``: the periodic retraining worker, a process of its own beside the
services, so a fit never holds up a Signal.

On each fire of its APScheduler trigger it reads the data file again (a file that grows gets
its new bars), fits the model on every period whose label is known, saves the checkpoint and
challenges the active model with it on the same validation periods
(``services.commands.challenge``): the challenger becomes active only if it scores higher, logged
either way. When it does and the worker knows the account (``--out`` of a paper account and its
Redis), it publishes a
``Control reload`` to the signal service, which loads the new active model between two
snapshots. Fires that come while a fit runs are coalesced into one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from engine.config import Config
from engine.data import Panel
from engine.events import Control, make_event
from engine.progress import JobProgress
from services.commands.challenge import Verdict, challenge
from services.commands.model_data import period_data
from services.commands.train import settings_of, training_record
from strategies.models.registry import ModelRegistry
from strategies.models.training import fit

log = structlog.get_logger("services.commands.retrain")


@dataclass(frozen=True)
class Retrained:
    """One retraining: the checkpoint saved and the challenge's verdict."""

    version: str
    verdict: Verdict
    samples: int
    seconds: float


def retrain_once(config: Config, panel: Panel, kind: str, device: str | None = None) -> Retrained:
    """Fit ``kind`` on all labelled periods of ``panel``, save it, activate it if it wins."""
    started = time.perf_counter()
    settings = settings_of(config, device)
    data = period_data(config, panel)
    rows = data.usable_before(data.n_periods - 1)
    with JobProgress("retrain", settings.epochs, "epoch", bar=False, model=kind) as epochs:
        model, report = fit(kind, data, rows, settings, lambda row: epochs.update(loss=row["loss"]))
    registry = ModelRegistry(config.model.registry)
    verdict = challenge(registry, kind, model, data, report.validation)
    version = registry.save(
        kind,
        model,
        training=training_record(data, rows, report.train_rows, panel.source, settings),
        metrics={"validation_ic": verdict.challenger_ic, "best_epoch": report.best_epoch},
        activate=verdict.challenger_wins,
    )
    seconds = time.perf_counter() - started
    log.info(
        "retrain.done",
        model=kind,
        version=version,
        activated=verdict.challenger_wins,
        reason=verdict.reason,
        validation_ic=round(verdict.challenger_ic, 4),
        active=verdict.active,
        active_validation_ic=None
        if verdict.active_ic != verdict.active_ic
        else round(verdict.active_ic, 4),
        samples=int(report.train_rows),
        seconds=round(seconds, 2),
    )
    return Retrained(version, verdict, int(report.train_rows), seconds)


def publish_reload(config: Config, namespace: str, version: str) -> None:
    """Tell the account's signal service to load the new active model."""
    import msgspec

    from engine.bus.factory import open_redis_bus

    config = msgspec.structs.replace(
        config, run=msgspec.structs.replace(config.run, namespace=namespace)
    )
    with open_redis_bus(config) as bus:
        bus.publish(
            Control.TOPIC,
            make_event(
                Control(command="reload", target="signal", reason=f"retrained: {version}"),
                source="retrain",
                corr=f"reload-{version}",
            ),
        )
    log.info("retrain.reload_published", namespace=namespace, version=version)


def run_worker(
    trigger: BaseTrigger,
    job: Callable[[], object],
    stop: threading.Event,
) -> int:
    """Run ``job`` on ``trigger`` until ``stop`` is set; return how many jobs ran. One job at
    a time; fires missed while one runs are coalesced into one."""
    runs = 0
    lock = threading.Lock()

    def fire() -> None:
        nonlocal runs
        with lock:
            try:
                job()
            except Exception as error:  # a failed fit must not end the worker
                log.error("retrain.failed", error=f"{type(error).__name__}: {error}")
            runs += 1

    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(fire, trigger, max_instances=1, coalesce=True, misfire_grace_time=None)
    scheduler.start()
    log.info("retrain.scheduled", next_fire=str(scheduler.get_jobs()[0].next_run_time))
    try:
        stop.wait()
    finally:
        scheduler.shutdown(wait=True)
    return runs


def account_namespace(out_dir: Path) -> str | None:
    """The namespace of the paper account in ``out_dir`` (None when there is none)."""
    from services.runtime.standalone import read_account

    account = read_account(out_dir)
    return account.namespace if account else None
