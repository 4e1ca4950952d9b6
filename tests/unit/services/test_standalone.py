"""The pieces of ``deepfactor run SERVICE`` that need no Redis: the run directory's locks, the
wait for the account, the consumer's clock and the recorder process's files."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime, timedelta

import pytest

from engine.bus import MemoryBus
from engine.clock import WallClock
from engine.config import load_config
from engine.errors import UsageError
from engine.events import Control, PortfolioSnapshot, make_event
from services.runtime.account import open_account
from services.runtime.run_dir import RunDirectory, RunDirectoryInUseError
from services.runtime.standalone import (
    EventTimeClock,
    ProcessLocks,
    RecorderProcess,
    StartTimeoutError,
    build_service,
    read_account,
    wait_for_account,
    write_replay_info,
)

T0 = datetime(2020, 1, 2, tzinfo=UTC)


def test_one_process_per_service_and_run_directory(tmp_path):
    with ProcessLocks(tmp_path, "rebalance"), ProcessLocks(tmp_path, "execution"):
        with pytest.raises(
            RunDirectoryInUseError, match=f"rebalance already runs there .pid {os.getpid()}"
        ):
            ProcessLocks(tmp_path, "rebalance").acquire()
    with ProcessLocks(tmp_path, "rebalance"):  # released: free again
        pass


def test_run_processes_and_a_paper_run_exclude_each_other(tmp_path):
    with ProcessLocks(tmp_path, "signal"):
        with pytest.raises(
            RunDirectoryInUseError, match=f"in use by another run .pid {os.getpid()}"
        ):
            RunDirectory(tmp_path).acquire()
    with RunDirectory(tmp_path):
        with pytest.raises(
            RunDirectoryInUseError, match=f"in use by a `deepfactor paper` run .pid {os.getpid()}"
        ):
            ProcessLocks(tmp_path, "signal").acquire()
    with ProcessLocks(tmp_path, "signal"):
        pass


def test_a_consumer_waits_for_the_account_and_never_writes_it(tmp_path):
    stop = threading.Event()
    with pytest.raises(StartTimeoutError, match="no paper account .account.json. after 0.2s"):
        wait_for_account(tmp_path, 0.2, stop)
    timer = threading.Timer(0.2, lambda: open_account(tmp_path, "base", "replay:x"))
    timer.start()
    account = wait_for_account(tmp_path, 10, stop)
    timer.join()
    assert account is not None and account.namespace.startswith("base-")
    assert (account.feed, account.starts) == ("replay:x", 1)
    assert read_account(tmp_path) == account  # reading does not count a start
    stop.set()
    assert wait_for_account(tmp_path / "none", 10, stop) is None  # stopped: no wait
    (tmp_path / "account.json").write_text("{")
    with pytest.raises(UsageError, match="account.json is unreadable"):
        read_account(tmp_path)


def test_the_clock_of_a_consumer_is_the_time_of_the_event_in_hand():
    clock = EventTimeClock()
    assert abs(clock.now() - datetime.now(UTC)) < timedelta(minutes=1)
    seen = []
    handle = clock.follow(lambda event: seen.append(clock.now()))
    for ts in (T0, T0 + timedelta(days=3), T0 + timedelta(days=1)):
        handle(make_event(Control(command="resume"), source="t", ts=ts))
    assert seen == [T0, T0 + timedelta(days=3), T0 + timedelta(days=1)]


def snapshot(day: int, equity: float) -> PortfolioSnapshot:
    return PortfolioSnapshot(
        asof=T0 + timedelta(days=day),
        equity=equity,
        cash=equity,
        positions={},
        prices={},
        gross_exposure=0.0,
        high_water_mark=100.0,
        drawdown=0.0,
        fills_applied=0,
    )


def recorder_with_rows(tmp_path) -> RecorderProcess:
    recorder = RecorderProcess(MemoryBus(), WallClock(), tmp_path, 100.0)
    for day, equity in enumerate((100.0, 101.0, 99.0)):
        recorder.handle(make_event(snapshot(day, equity), source="t"))
    return recorder


def test_the_recorder_process_writes_its_files_at_a_halt(tmp_path):
    account = open_account(tmp_path, "base", "replay:x")
    open_account(tmp_path, "base", "replay:x")  # a continued account: one restart
    write_replay_info(tmp_path, account.feed, 252.0)
    recorder = recorder_with_rows(tmp_path)
    recorder.handle(make_event(Control(command="halt", reason="end of data"), source="t"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["bars"] == 3 and summary["final_equity"] == 99.0
    assert summary["periods_per_year"] == 252.0 and summary["restarts"] == 1
    assert (tmp_path / "equity.csv").read_text().count("\n") == 4


def test_without_replay_info_the_recorder_infers_the_year_from_the_bars(tmp_path):
    open_account(tmp_path, "base", "replay:x")
    write_replay_info(tmp_path, "replay:another", 252.0)  # not this account's feed
    summary = recorder_with_rows(tmp_path).write_files("stopped")
    assert summary is not None and summary["periods_per_year"] == 365.0
    assert summary["restarts"] == 0


def test_build_service_knows_the_five_consumers(tmp_path):
    config = load_config(None, {})
    for name in ("factor-update", "signal", "rebalance", "execution", "recorder"):
        assert build_service(name, config, MemoryBus(), WallClock(), tmp_path).name == name
    with pytest.raises(UsageError, match="unknown service 'market-data'"):
        build_service("market-data", config, MemoryBus(), WallClock(), tmp_path)
