"""A run directory has one owner at a time, its lock dies with its holder, and it keeps the
config the run started with, secrets masked."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import load_config
from engine.errors import UsageError
from services.commands.cli import main
from services.runtime.run_dir import RunDirectory, RunDirectoryInUseError, resolved_config_text

ROOT = Path(__file__).resolve().parents[3]
# Takes the lock on argv[1], starts a child that would outlive it (as a redis-server would),
# prints that child's pid, then waits to be killed.
HOLDER = """
import subprocess, sys, time
from services.runtime.run_dir import RunDirectory

RunDirectory(sys.argv[1]).acquire()
child = subprocess.Popen(["sleep", "60"], close_fds=False)
print(child.pid, flush=True)
time.sleep(600)
"""


def test_the_holder_is_recorded_and_a_second_claim_is_refused_naming_it(tmp_path):
    with RunDirectory(tmp_path / "run") as first:
        record = json.loads(first.lock_file.read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert record["started"].endswith("Z")
        # flock belongs to an open file description: a second claim in this process is
        # refused just like one from another process.
        with pytest.raises(RunDirectoryInUseError) as refused:
            RunDirectory(tmp_path / "run", option="--out").acquire()
    message = str(refused.value)
    assert message.startswith(f"--out {tmp_path / 'run'}: in use by another run")
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
    assert record["started"] in message and "\n" not in message
    assert isinstance(refused.value, UsageError)  # so the command line exits 2
    assert first.lock_file.read_text() == ""  # released: the record is cleared
    with RunDirectory(tmp_path / "run") as again:
        assert again.held


def test_a_killed_holder_leaves_no_lock_even_when_its_child_outlives_it(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "run")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(RunDirectoryInUseError, match=f"pid {holder.pid} on host"):
            RunDirectory(tmp_path / "run").acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        os.kill(child, 0)  # still running: it must not have inherited the lock
        with RunDirectory(tmp_path / "run") as claimed:
            assert json.loads(claimed.lock_file.read_text())["pid"] == os.getpid()
    finally:
        holder.kill()
        holder.stdout.close()
        os.kill(child, signal.SIGKILL)


def test_a_lock_taken_but_not_yet_written_is_still_refused(tmp_path):
    import fcntl

    run = tmp_path / "run"
    run.mkdir()
    with open(run / "run.lock", "w") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        with pytest.raises(RunDirectoryInUseError, match="holder not recorded yet"):
            RunDirectory(run).acquire()


def test_config_is_written_with_secrets_masked_as_config_check_prints_it(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("DEEPFACTOR_BUS__REDIS_URL", "redis://trader:hunter2@db.example:6379/0")
    config = load_config(None)
    with RunDirectory(tmp_path / "run") as run_dir:
        written = run_dir.write_config(config).read_text()
    assert "hunter2" not in written
    shown = json.loads(written)
    assert shown["bus"]["redis_url"] == "redis://trader:***@db.example:6379/0"
    assert shown["run"]["namespace"] == config.run.namespace
    assert written == resolved_config_text(config)
    assert main(["config", "check"]) == 0
    assert capsys.readouterr().out == written


def test_a_config_that_cannot_be_written_is_a_usage_error_naming_the_directory(tmp_path):
    run = tmp_path / "run"
    (run / "config.json").mkdir(parents=True)  # a directory where the file should go
    with RunDirectory(run) as claimed:
        with pytest.raises(UsageError, match=rf"^--out {run}: cannot write config.json \("):
            claimed.write_config(load_config(None))
        assert not (run / ".config.json.tmp").exists()


def test_a_run_refused_after_acquiring_leaves_the_path_as_it_found_it(tmp_path):
    fresh = tmp_path / "new" / "run"
    RunDirectory(fresh).acquire().release(discard=True)
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "summary.json").write_text("{}")  # an earlier run's files stay
    RunDirectory(kept).acquire().release(discard=True)
    assert sorted(p.name for p in kept.iterdir()) == ["summary.json"]
    RunDirectory(kept).acquire().release()  # a run that did start leaves its lock file
    RunDirectory(kept).acquire().release(discard=True)
    assert (kept / "run.lock").read_text() == ""


def test_an_unusable_path_is_a_usage_error_naming_it(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match=r"^\[run\] run_dir .*file/run: cannot lock run.lock"):
        RunDirectory(tmp_path / "file" / "run", option="[run] run_dir").acquire()
