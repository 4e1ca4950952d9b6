"""`deepfactor paper` when its Redis fails: an unreachable server is given up on within
``[bus] connect_timeout_s`` (exit 1, one line naming the URL), a signal cuts that wait short,
a Redis that lost its data (flushed, restarted empty) halts the run loudly (exit 1, an error
line, ``stopped_reason`` in summary.json) and is refused on the next start, and SIGTERM while
Redis is down ends the run within a bound.

Real processes; the faulty Redis is a private server each test starts (never the shared one).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from engine.bus import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[2]


def paper(out: Path, speed: str, bars: int = 200, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "services.commands.cli", "paper", "--synthetic", "--bars", str(bars),
        "--speed", speed, "--out", str(out), *extra,
    ]  # fmt: skip


def environment(redis_url: str, **overrides: str) -> dict[str, str]:
    return {
        **os.environ,
        "DEEPFACTOR_BUS__REDIS_URL": redis_url,
        "DEEPFACTOR_BUS__BLOCK_MS": "50",
        "DEEPFACTOR_RUN__NAMESPACE": f"faults-{uuid.uuid4().hex[:8]}",
        "DEEPFACTOR_MARKET__SYMBOLS": "6",
        "DEEPFACTOR_SCHEDULE__CRON": "0 0 * * MON,THU",
        "DEEPFACTOR_LOG__LEVEL": "warning",
        "DEEPFACTOR_LOG__FORMAT": "json",
        **overrides,
    }


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.fixture
def server(short_tmp: Path):
    """A private redis-server without persistence: what an external Redis restarted empty is."""
    with EmbeddedRedis(short_tmp / "ext", appendonly=False) as embedded:
        yield embedded


def wait_for_bars(process: subprocess.Popen, out: Path, url: str, bars: int) -> str:
    """Wait until the run's bars stream holds ``bars`` entries; return its namespace."""
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, "the run ended early"
            account = out / "account.json"
            if account.exists():
                namespace = json.loads(account.read_text())["namespace"]
                try:
                    if client.xlen(f"{namespace}:bars") >= bars:
                        return namespace
                except redis.ConnectionError:
                    pass  # the run's own server is still starting
            time.sleep(0.02)
    finally:
        client.close()
    pytest.fail(f"the run never reached {bars} bars")


def test_unreachable_redis_fails_within_connect_timeout(tmp_path: Path) -> None:
    url = "redis://user:s3cret@127.0.0.1:1/0"  # nothing listens on port 1
    env = environment(url, DEEPFACTOR_BUS__CONNECT_TIMEOUT_S="2")
    started = time.monotonic()
    result = subprocess.run(
        paper(tmp_path / "run", "max", 10), cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-3000:]
    assert elapsed < 15, elapsed
    line = error_line(result.stderr)
    assert "cannot connect to Redis at redis://user:***@127.0.0.1:1/0" in line
    assert "connect_timeout_s" in line
    assert "s3cret" not in result.stderr


def test_sigterm_while_connecting_ends_promptly(tmp_path: Path) -> None:
    url = "redis://127.0.0.1:1/0"
    env = environment(
        url, DEEPFACTOR_BUS__CONNECT_TIMEOUT_S="600", DEEPFACTOR_BUS__RECONNECT_MAX_DELAY_S="1"
    )
    process = subprocess.Popen(
        paper(tmp_path / "run", "max", 10), cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    waiting = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "bus.redis_unavailable" in line:
                waiting.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert waiting.wait(30), "".join(lines)[-3000:]  # it is waiting for Redis
        time.sleep(1.0)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
        took = time.monotonic() - signalled
        reader.join(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = "".join(lines)
    assert took < 5, took
    assert process.returncode == 1, stderr[-3000:]
    line = error_line(stderr)
    assert "cannot connect to Redis at redis://127.0.0.1:1/0" in line
    assert "stopped" in line


def test_redis_that_lost_its_data_halts_the_run(tmp_path: Path, server: EmbeddedRedis) -> None:
    out = tmp_path / "run"
    env = environment(server.url)
    process = subprocess.Popen(
        paper(out, "40"), cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_bars(process, out, server.url, 15)
        client = redis.Redis.from_url(server.url)
        client.flushall()  # what a restart of a Redis without persistence leaves
        flushed = time.monotonic()
        _, stderr = process.communicate(timeout=60)
        ended = time.monotonic() - flushed
        leftover = {key.decode(): client.type(key).decode() for key in client.keys()}
        groups = {k: client.xinfo_groups(k) for k, kind in leftover.items() if kind == "stream"}
        client.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1, stderr[-3000:]
    assert ended < 20, ended
    line = error_line(stderr)
    assert "Redis data" in line and "was lost" in line, line
    assert '"event": "paper.redis_data_lost"' in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_reason"].startswith("redis data lost"), summary
    assert summary["bars"] < 200
    # Published nothing more: no consumer group was recreated (so nothing was consumed after
    # the loss), no account marker reappeared; what is there is at most the commits of work
    # that was in flight when the data went (a stream entry, a processed set).
    assert not any(groups.values()), groups
    assert not any(key.endswith(":account") for key in leftover), leftover
    print("left after the loss:", leftover)

    # Started again on the same directory: refused, offering --fresh.
    again = subprocess.run(
        paper(out, "max"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 1, again.stderr[-3000:]
    line = error_line(again.stderr)
    assert "account.json says paper account" in line and "--fresh" in line, line

    # --fresh opens a new account there, which runs to the end.
    fresh = subprocess.run(
        paper(out, "max", 30, "--fresh"), cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "stopped_reason" not in json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_sigterm_while_redis_is_down_ends_the_run(
    tmp_path: Path, server: EmbeddedRedis, fault: str
) -> None:
    out = tmp_path / "run"
    process = subprocess.Popen(
        paper(out, "40"), cwd=ROOT, env=environment(server.url),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.process is not None
    pid = server.process.pid
    try:
        wait_for_bars(process, out, server.url, 10)
        os.kill(pid, signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
        time.sleep(1.0)  # the run meets the outage
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        took = time.monotonic() - signalled
    finally:
        if fault == "hung":
            os.kill(pid, signal.SIGCONT)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert took < 10, took
    assert process.returncode == 1, stderr[-3000:]
    line = error_line(stderr)
    assert server.url in line, line
    assert "unavailable" in line or "does not answer" in line, line


def test_embedded_server_killed_mid_run_stops_the_run(short_tmp: Path) -> None:
    out = short_tmp / "run"  # short: the embedded server's socket is out/redis/redis.sock
    env = environment("")  # no URL: the run starts its private server under --out
    command = paper(out, "40", 120)
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_bars(process, out, f"unix://{out}/redis/redis.sock", 10)
        server_pid = int((out / "redis" / "redis.pid").read_text())
        os.kill(server_pid, signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = process.communicate(timeout=30)
        took = time.monotonic() - killed
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert took < 10, took
    assert process.returncode == 1, stderr[-3000:]
    line = error_line(stderr)
    assert f"the embedded redis-server (pid {server_pid}" in line, line
    assert "killed by signal 9" in line and "Run the same command again" in line, line

    # The same command continues the account from the append-only file, to the end.
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bars"] == 120 and summary["restarts"] == 1, summary


def test_redis_restarted_with_its_data_continues_the_run(tmp_path: Path, short_tmp: Path) -> None:
    # An external Redis with an append-only file, restarted mid-run: the run waits for it,
    # reconnects, and ends where the same run without the restart ends.
    with EmbeddedRedis(short_tmp / "aof", appendonly=True) as server:
        calm = subprocess.run(
            paper(tmp_path / "calm", "max", 120), cwd=ROOT, env=environment(server.url),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert calm.returncode == 0, calm.stderr[-3000:]
        out = tmp_path / "restarted"
        process = subprocess.Popen(
            paper(out, "40", 120), cwd=ROOT, env=environment(server.url),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_for_bars(process, out, server.url, 15)
            server.stop()  # SIGTERM: the server writes its append-only file and exits
            time.sleep(1.0)  # the run meets the outage
            server.start()
            _, stderr = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0, stderr[-3000:]
    assert "bus.redis_unavailable" in stderr  # it did meet the outage
    assert "redis_data_lost" not in stderr
    expected = json.loads((tmp_path / "calm" / "summary.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bars"] == expected["bars"] == 120
    assert summary["orders"] == expected["orders"] > 0
    assert summary["final_equity"] == pytest.approx(expected["final_equity"], rel=1e-12)
    assert "stopped_reason" not in summary
