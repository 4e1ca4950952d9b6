"""Long jobs report progress: a bar on a terminal, a ``job.progress`` event at most every
interval elsewhere (a daemon's log), with figures checked here by hand."""

from __future__ import annotations

import io

import pytest
from structlog.testing import capture_logs

import engine.progress
from engine.config import load_config
from engine.data.synthetic import synthetic_panel
from engine.progress import JobProgress
from services.commands.backtest import Backtest


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def progress_events(logs: list[dict]) -> list[dict]:
    return [entry for entry in logs if entry["event"] == "job.progress"]


def test_off_a_terminal_it_logs_at_most_once_per_interval() -> None:
    clock = Clock()
    with capture_logs() as logs:
        progress = JobProgress(
            "backtest", 100, "bar", stream=io.StringIO(), interval_s=10, clock=clock, run="r1"
        )
        for _ in range(40):  # 40 bars, one every 0.5 s: 20 s in all
            clock.now += 0.5
            progress.update()
        progress.close()
    events = progress_events(logs)
    # Logged at 10 s (bar 20) and at 20 s (bar 40): never more often than the interval.
    assert [e["done"] for e in events] == [20, 40]
    first = events[0]
    assert first["job"] == "backtest" and first["run"] == "r1" and first["unit"] == "bar"
    assert first["total"] == 100 and first["percent"] == 20.0
    assert first["elapsed_s"] == 10.0 and first["rate_per_s"] == 2.0
    assert first["eta_s"] == pytest.approx((100 - 20) / 2.0)


def test_an_unknown_total_logs_counts_without_percent() -> None:
    clock = Clock()
    with capture_logs() as logs:
        progress = JobProgress(
            "train", None, "epoch", stream=io.StringIO(), interval_s=0, clock=clock
        )
        clock.now += 4
        progress.update(2, loss=0.5)
    (event,) = progress_events(logs)
    assert event["done"] == 2 and event["total"] is None and event["loss"] == 0.5
    assert "percent" not in event and "eta_s" not in event and event["rate_per_s"] == 0.5


def test_on_a_terminal_it_draws_a_bar_and_logs_nothing() -> None:
    terminal = Terminal()
    with (
        capture_logs() as logs,
        JobProgress("data_fetch", 3, "symbol", stream=terminal, interval_s=0) as p,
    ):
        for _ in range(3):
            p.update(symbol="BTC/USDT")
    assert progress_events(logs) == []
    drawn = terminal.getvalue()  # tqdm redraws at most every 0.1 s: the first frame at least
    assert "data_fetch" in drawn and "/3 " in drawn and "symbol/s" in drawn and p.done == 3


def test_a_caller_drawing_its_own_bar_gets_neither() -> None:
    terminal = Terminal()
    with (
        capture_logs() as logs,
        JobProgress("train", 5, "epoch", stream=terminal, bar=False, interval_s=0) as p,
    ):
        p.update()
    assert progress_events(logs) == [] and terminal.getvalue() == ""


def test_a_backtest_logs_its_bars_done(monkeypatch) -> None:
    monkeypatch.setattr(engine.progress, "INTERVAL_S", 0.0)
    panel = synthetic_panel(8, 90, seed=11)
    backtest = Backtest(load_config(None, {}), panel)
    with capture_logs() as logs:
        backtest.run()
    events = progress_events(logs)
    done = [e["done"] for e in events if e["job"] == "backtest"]
    assert done and done == sorted(done) and done[-1] == panel.n_bars
    assert {e["total"] for e in events} == {panel.n_bars}
