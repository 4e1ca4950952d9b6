"""``deepfactor up`` as a user runs it: six service processes over the run directory's private
Redis, watched through ``deepfactor status``. A stopped service goes stale in the status, a
killed one is restarted by the supervisor, SIGTERM stops everything cleanly, a killed
supervisor takes its children and its Redis along, and a service that keeps dying makes it
give up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"market-data", "factor-update", "signal", "rebalance", "execution", "recorder"}
ENV = {
    "DEEPFACTOR_PAPER__HEARTBEAT_S": "0.5",
    "DEEPFACTOR_BUS__BLOCK_MS": "100",
    "DEEPFACTOR_MARKET__SYMBOLS": "8",
    "DEEPFACTOR_SUPERVISOR__BACKOFF_INITIAL_S": "0.2",
    "DEEPFACTOR_LOG__FORMAT": "json",
}
START_S = 120.0  # six interpreters importing torch on two busy cores


def deepfactor(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.commands.cli", *args]


def start_up(out: Path, log: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """``deepfactor up`` with its log (and its children's: they share its stderr) in ``log``,
    a file: a pipe nobody reads would fill and block the services."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DEEPFACTOR_")}
    with log.open("ab") as sink:
        return subprocess.Popen(
            deepfactor("up", "--out", str(out), "--synthetic", *args),
            cwd=ROOT,
            env={**environ, **ENV, **env},
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )


def status(out: Path) -> dict | None:
    done = subprocess.run(
        deepfactor("status", "--out", str(out), "--json"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(done.stdout) if done.returncode == 0 else None


def health(out: Path, service: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        deepfactor("status", "--out", str(out), "--json", "--service", service),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def services(out: Path) -> dict[str, dict]:
    current = status(out)
    return {} if current is None else {row["service"]: row for row in current["services"]}


def wait_until(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def all_alive(out: Path) -> dict[str, dict] | None:
    rows = services(out)
    alive = {name for name, row in rows.items() if row["state"] == "alive"}
    return rows if alive == SERVICES else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def events(log: Path) -> list[dict]:
    lines = []
    for line in log.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def test_up_restarts_a_killed_service_reports_a_stale_one_and_stops_cleanly(
    short_tmp: Path,
) -> None:
    out, log = short_tmp / "acct", short_tmp / "up.log"
    up = start_up(out, log, "--bars", "160", "--speed", "10")
    try:
        rows = wait_until(lambda: all_alive(out), START_S, "six services alive in status")
        execution = rows["execution"]["pid"]
        assert health(out, "execution").returncode == 0
        # Frozen: its heartbeats stop, and status says so within three intervals.
        os.kill(execution, signal.SIGSTOP)
        wait_until(lambda: services(out)["execution"]["state"] == "stale", 30, "execution stale")
        probe = health(out, "execution")  # what a container's healthcheck runs
        assert probe.returncode == 1 and "execution is not alive (stale)" in probe.stderr
        os.kill(execution, signal.SIGKILL)
        restarted = wait_until(
            lambda: (
                (row := services(out)["execution"])["pid"] != execution
                and row["state"] == "alive"
                and row
            ),
            60,
            "execution restarted",
        )
        assert restarted["uptime_s"] < 60
        # The replay reaches the end of its data (the recorder writes the summary at the halt).
        wait_until(lambda: (out / "summary.json").exists(), 120, "the end of the data")
        # The replay's process ends by itself once the account has drained, a moment after the
        # summary (longer on a loaded machine): a stop sent before then would end it instead.
        wait_until(
            lambda: any(
                e.get("event") == "supervisor.child_finished" and e.get("child") == "market-data"
                for e in events(log)
            ),
            60,
            "the replay's process to finish",
        )
        final = status(out)
        assert final is not None and final["portfolio"]["equity"] > 0
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=90)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert up.returncode == 0, log.read_text()[-3000:]
    lines = events(log)
    supervisor = [e for e in lines if e.get("service") == "supervisor"]
    exited = [e for e in supervisor if e["event"] == "supervisor.child_exited"]
    assert [(e["child"], e["reason"]) for e in exited] == [("execution", "killed by SIGKILL")]
    assert [e["child"] for e in supervisor if e["event"] == "supervisor.child_finished"] == [
        "market-data"
    ]
    stopped = [e for e in supervisor if e["event"] == "supervisor.child_stopped"]
    assert {e["child"] for e in stopped} == SERVICES - {"market-data"}
    assert all(e["returncode"] == 0 for e in stopped)
    ends = [e for e in supervisor if e["event"] == "supervisor.stopped"]
    assert len(ends) == 1 and ends[0]["clean"]
    assert supervisor[-1]["event"] == "bus.embedded_redis_stopped"  # after its services
    pids = {e["pid"] for e in supervisor if e["event"] == "supervisor.child_started"}
    assert len(pids) == 7  # six first starts and one restart
    assert not [pid for pid in pids if pid_alive(pid)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bars"] == 160


@pytest.mark.slow
def test_a_killed_supervisor_takes_its_services_along_and_one_dying_too_often_gives_up(
    short_tmp: Path,
) -> None:
    out, log = short_tmp / "acct", short_tmp / "up.log"
    up = start_up(out, log, "--bars", "0", "--speed", "5")
    try:
        wait_until(lambda: all_alive(out), START_S, "six services alive in status")
        children = {e["pid"] for e in events(log) if e.get("event") == "supervisor.child_started"}
        assert len(children) == 6
        up.kill()  # SIGKILL: no clean-up code runs in the supervisor
        up.wait()
        wait_until(lambda: not [p for p in children if pid_alive(p)], 60, "the children to exit")
        redis_pid = int((out / "redis" / "redis.pid").read_text().split()[0])
        wait_until(lambda: not pid_alive(redis_pid), 30, "the private Redis to exit")
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    # Started again on the same account, with a give-up limit of one restart.
    log2 = short_tmp / "up2.log"
    up = start_up(out, log2, "--bars", "0", "--speed", "5", DEEPFACTOR_SUPERVISOR__MAX_RESTARTS="1")
    try:
        rows = wait_until(lambda: all_alive(out), START_S, "six services alive again")
        os.kill(rows["execution"]["pid"], signal.SIGKILL)
        again = wait_until(
            lambda: (
                (row := services(out)["execution"])["pid"] != rows["execution"]["pid"]
                and row["state"] == "alive"
                and row
            ),
            60,
            "execution restarted",
        )
        os.kill(again["pid"], signal.SIGKILL)
        up.wait(timeout=90)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert up.returncode == 1
    text = log2.read_text()
    assert "gave up: execution exited 2 times" in text
    gave_up = [e for e in events(log2) if e.get("event") == "supervisor.gave_up"]
    assert gave_up and gave_up[0]["child"] == "execution"
    account = json.loads((out / "account.json").read_text())
    assert account["starts"] == 2  # the same account, continued
