"""The embedded redis-server's life is its parent's: real processes, killed with SIGKILL.

A parent killed with SIGKILL takes its server along (Linux, PR_SET_PDEATHSIG). A server that
did outlive its parent (started off the main thread, or on a system without PDEATHSIG) is
found through ``redis.pid`` and its socket on the next start, and shut down cleanly with its
append-only data kept. Stale pid files and sockets are removed with a log line, an unrelated
process that got a stale pid is left alone, and a second server on one directory is refused.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from structlog.testing import capture_logs

from engine.bus import EmbeddedRedis
from engine.errors import BusError

ROOT = Path(__file__).resolve().parents[2]
LINUX = sys.platform.startswith("linux")
needs_linux = pytest.mark.skipif(
    not LINUX, reason="needs hardware: Linux (PR_SET_PDEATHSIG, /proc)"
)

# Starts a server on argv[1] (from the main thread, or a worker thread with argv[2] == "thread"),
# writes 50 stream entries and a key, prints the server's pid, then sleeps until killed.
PARENT = """
import sys, threading, time
import redis
from engine.bus import EmbeddedRedis

server = EmbeddedRedis(sys.argv[1])
if sys.argv[2] == "thread":
    worker = threading.Thread(target=server.start)
    worker.start()
    worker.join()
else:
    server.start()
client = redis.Redis.from_url(server.url)
for i in range(50):
    client.xadd("fills", {"n": i})
client.set("written-by", "first run")
print("READY", server.process.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (PID 1 of some containers never reaps)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    if not LINUX:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_gone(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def start_parent(data_dir: Path, mode: str) -> tuple[subprocess.Popen, int]:
    """Run PARENT; return it and the pid of the redis-server it started."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(data_dir), mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = parent.stdout.readline()
        if line.startswith("READY"):
            return parent, int(line.split()[1])
        if not line and parent.poll() is not None:
            break
    parent.kill()
    raise AssertionError(f"the parent process never started its server ({parent.poll()})")


def kill_parent(parent: subprocess.Popen) -> None:
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    parent.stdout.close()


def events(logs: list[dict], name: str) -> list[dict]:
    return [line for line in logs if line["event"] == name]


@pytest.fixture
def reap():
    """Pids to SIGKILL after the test if a failed assertion left them running."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@needs_linux
def test_a_sigkilled_parent_takes_its_server_along(short_tmp, reap):
    data = short_tmp / "redis"
    parent, server_pid = start_parent(data, "main")
    reap += [parent.pid, server_pid]
    assert alive(server_pid)
    assert (data / "redis.pid").read_text().strip() == str(server_pid)
    kill_parent(parent)
    assert wait_gone(server_pid), "the redis-server outlived its SIGKILLed parent"
    # It got SIGTERM, so it flushed its append-only file and took its socket along; the pid
    # file the killed parent could not remove is stale, and the next start says so.
    assert not (data / "redis.sock").exists()
    with capture_logs() as logs, EmbeddedRedis(data) as server:
        client = redis.Redis.from_url(server.url)
        assert client.xlen("fills") == 50 and client.get("written-by") == b"first run"
        client.close()
    [stale] = events(logs, "bus.embedded_redis_stale_cleaned")
    assert stale["pid"] == server_pid and stale["pid_alive"] is False
    assert stale["pid_file"] == str(data / "redis.pid")
    assert not events(logs, "bus.embedded_redis_orphan_stopped")


@pytest.mark.parametrize("depth", ["short", "deep"])
def test_a_server_left_running_is_shut_down_on_the_next_start_with_its_data_kept(
    short_tmp, reap, depth
):
    # "deep": a data directory too long for a unix socket path, so the socket lives in the
    # temporary directory; the next start must still find it there.
    data = short_tmp / "redis" if depth == "short" else short_tmp / ("d" * 90) / "redis"
    # Started off the main thread, the server is not tied to its parent: the one way a
    # server outlives a SIGKILLed parent on Linux (and the only way elsewhere).
    parent, orphan = start_parent(data, "thread")
    reap += [parent.pid, orphan]
    kill_parent(parent)
    time.sleep(0.3)
    assert alive(orphan), "expected the server to outlive its parent here"
    server = EmbeddedRedis(data)
    assert (depth == "deep") == (server.socket_path.parent != data)
    with capture_logs() as logs:
        server.start()
    try:
        assert not alive(orphan)
        assert server.process.pid != orphan
        assert (data / "redis.pid").read_text().strip() == str(server.process.pid)
        client = redis.Redis.from_url(server.url)
        assert client.info("server")["process_id"] == server.process.pid
        # Nothing was lost: SHUTDOWN flushed the append-only file the new server loaded.
        assert client.xlen("fills") == 50 and client.get("written-by") == b"first run"
        client.close()
    finally:
        server.stop()
    [stopped] = events(logs, "bus.embedded_redis_orphan_stopped")
    assert stopped["pid"] == orphan and stopped["via"] == "SHUTDOWN"
    names = [line["event"] for line in logs]
    assert names.index("bus.embedded_redis_orphan_stopped") < names.index(
        "bus.embedded_redis_started"
    )
    assert not (data / "redis.pid").exists()


def test_a_stale_pid_file_and_socket_are_removed_with_a_log_line(short_tmp):
    data = short_tmp / "redis"
    data.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])  # CI runs with a bare PATH
    gone.wait()
    (data / "redis.pid").write_text(f"{gone.pid}\n")
    listener = socket.socket(socket.AF_UNIX)  # a socket file nobody listens on any more
    listener.bind(str(data / "redis.sock"))
    listener.close()
    with capture_logs() as logs, EmbeddedRedis(data) as server:
        assert redis.Redis.from_url(server.url).ping()
    [stale] = events(logs, "bus.embedded_redis_stale_cleaned")
    assert stale["pid"] == gone.pid and stale["pid_alive"] is False
    assert stale["socket"] == str(data / "redis.sock")
    assert stale["log_level"] == "warning"


@needs_linux
def test_a_pid_file_naming_an_unrelated_live_process_is_stale_and_the_process_is_spared(
    short_tmp,
):
    data = short_tmp / "redis"
    data.mkdir()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (data / "redis.pid").write_text(f"{bystander.pid}\n")
        with capture_logs() as logs, EmbeddedRedis(data):
            pass
        [stale] = events(logs, "bus.embedded_redis_stale_cleaned")
        assert stale["pid"] == bystander.pid and stale["pid_alive"] is True
        assert bystander.poll() is None, "an unrelated process was signalled"
    finally:
        bystander.kill()
        bystander.wait()


def test_the_server_has_its_own_process_group_so_a_ctrl_c_reaches_only_its_parent(short_tmp):
    with EmbeddedRedis(short_tmp / "redis") as server:
        assert os.getpgid(server.process.pid) == server.process.pid != os.getpgid(0)


def test_a_second_server_on_one_directory_is_refused(short_tmp):
    data = short_tmp / "redis"
    with EmbeddedRedis(data) as first:
        second = EmbeddedRedis(data)
        try:
            with pytest.raises(
                BusError, match=rf"belongs to a running process \(pid {os.getpid()}\)"
            ):
                second.start()
        finally:
            second.stop()  # a refused start leaves the owner's files alone
        assert second.process is None
        assert redis.Redis.from_url(first.url).ping()
        assert (data / "redis.pid").read_text().strip() == str(first.process.pid)
    with EmbeddedRedis(data) as again:  # released on stop
        assert redis.Redis.from_url(again.url).ping()


def test_a_garbled_pid_file_is_stale(short_tmp):
    data = short_tmp / "redis"
    data.mkdir()
    (data / "redis.pid").write_text("not a pid\n")
    with capture_logs() as logs, EmbeddedRedis(data):
        pass
    [stale] = events(logs, "bus.embedded_redis_stale_cleaned")
    assert stale["pid"] == "not a pid" and stale["socket"] is None
