"""The retraining worker fires on its APScheduler trigger until stopped, one job at a time,
and a job that fails is logged and does not end the worker."""

from __future__ import annotations

import threading

from structlog.testing import capture_logs

from engine.scheduling import build_trigger
from services.commands.retrain import run_worker


def test_the_worker_keeps_firing_after_a_failed_job():
    stop = threading.Event()
    calls: list[int] = []

    def job() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("the first fit fails")
        if len(calls) >= 2:
            stop.set()

    bound = threading.Timer(20.0, stop.set)  # should the trigger never fire
    bound.daemon = True
    bound.start()
    with capture_logs() as logs:
        runs = run_worker(build_trigger(interval="1s"), job, stop)
    bound.cancel()
    assert runs == len(calls) >= 2
    failed = [e for e in logs if e["event"] == "retrain.failed"]
    assert len(failed) == 1 and "the first fit fails" in failed[0]["error"]
