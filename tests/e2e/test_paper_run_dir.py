"""``deepfactor paper`` owns its run directory: real processes, as a user runs them.

A second run on a directory in use is refused with exit 2 and one line naming the holder, and
the first carries on and stops cleanly on SIGTERM. After a SIGKILL of the holder the next run
proceeds, and the killed run's private redis-server has died with it (Linux). Each run leaves
the config it started with, as ``deepfactor config check`` prints it.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.cli_process import deepfactor as run_cli

ROOT = Path(__file__).resolve().parents[2]
LINUX = sys.platform.startswith("linux")
ENV = {k: v for k, v in os.environ.items() if not k.startswith("DEEPFACTOR_")}


deepfactor = functools.partial(run_cli, env=ENV)


class SlowRun:
    """A paper run at 5 bars a second in the background, its stderr drained into ``lines``."""

    def __init__(self, out: Path, *, own_group: bool = False) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.commands.cli", "paper"]
            + ["--speed", "5", "--bars", "200", "--out", str(out)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            start_new_session=own_group,  # as a shell runs a job: its own process group
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_started(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not any('"paper.started"' in line for line in self.lines):
            assert self.process.poll() is None, "".join(self.lines)[-2000:]
            assert time.monotonic() < deadline, "the first run never started"
            time.sleep(0.05)

    def finish(self, timeout_s: float = 60) -> str:
        stdout = self.process.stdout.read()
        self.process.wait(timeout_s)
        self._reader.join(10)
        return stdout

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.process.stdout.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (some containers never reap) is gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return not LINUX


def logged(stderr: str, name: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if f'"event": "{name}"' in line]


def test_a_second_run_on_a_directory_in_use_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    first = SlowRun(out)
    try:
        first.wait_started()
        second = deepfactor("paper", "--bars", "5", "--speed", "max", "--out", str(out))
        assert second.returncode == 2, second.stderr[-2000:]
        [line] = second.stderr.splitlines()
        assert line.startswith(f"error: --out {out}: in use by another run (pid ")
        assert f"pid {first.process.pid} on host {socket.gethostname()}, started " in line
        assert second.stdout == ""
        assert first.process.poll() is None, "the refused run disturbed the first"
        first.process.send_signal(signal.SIGTERM)
        stdout = first.finish()
    finally:
        first.kill()
    assert first.process.returncode == 0, "".join(first.lines)[-2000:]
    assert "paper (stopped early)" in stdout
    assert (out / "summary.json").is_file()
    assert (out / "run.lock").read_text() == ""  # released at exit
    check = deepfactor("config", "check")
    assert check.returncode == 0 and (out / "config.json").read_text() == check.stdout


def test_after_a_sigkill_of_the_holder_the_next_run_proceeds(tmp_path):
    out = tmp_path / "run"
    first = SlowRun(out)
    try:
        first.wait_started()
        server = int((out / "redis" / "redis.pid").read_text())
        assert alive(server)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
    finally:
        first.kill()
    if LINUX:  # PR_SET_PDEATHSIG: the private redis-server dies with its parent
        deadline = time.monotonic() + 5
        while alive(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(server), "the killed run's redis-server is still running"
    second = deepfactor("paper", "--bars", "5", "--speed", "max", "--out", str(out))
    assert second.returncode == 0, second.stderr[-2000:]
    # The killed run could not remove its pid file: the next start finds it and says so
    # (elsewhere than Linux it finds the server itself still running, and shuts it down).
    found = logged(second.stderr, "bus.embedded_redis_stale_cleaned") + logged(
        second.stderr, "bus.embedded_redis_orphan_stopped"
    )
    assert [line["pid"] for line in found] == [server]
    if not LINUX:
        assert not alive(server)
    assert json.loads((out / "config.json").read_text())["run"]["namespace"] == "deepfactor"


def test_a_run_refused_for_its_data_leaves_no_run_directory_behind(tmp_path):
    out = tmp_path / "new" / "run"
    result = deepfactor("paper", "--data", str(tmp_path / "nope.csv"), "--out", str(out))
    assert result.returncode == 2 and "nope.csv" in result.stderr
    assert not (tmp_path / "new").exists()


def test_ctrl_c_in_a_terminal_stops_paper_cleanly(tmp_path):
    # A terminal's Ctrl-C sends SIGINT to the whole foreground process group. It must reach
    # only deepfactor, which drains its services over its Redis; a private redis-server in
    # the same group would shut down under them and the drain would hang on reconnects.
    first = SlowRun(tmp_path / "run", own_group=True)
    try:
        first.wait_started()
        os.killpg(first.process.pid, signal.SIGINT)
        stdout = first.finish()
    finally:
        first.kill()
    assert first.process.returncode == 0, "".join(first.lines)[-2000:]
    assert "paper (stopped early)" in stdout
    assert not any('"bus.redis_unavailable"' in line for line in first.lines)
