"""A run directory has one owner: the run that holds its lock, for as long as it runs.

``RUN_DIR/run.lock`` is locked with ``flock`` (exclusive, non-blocking) when a run starts and
unlocked when it ends. The kernel drops the lock when its process dies, however it dies, so a
run killed with SIGKILL leaves no stale lock behind. The file also says who holds it (pid, host
and start time), so that a refused run can name the holder. The descriptor is not inherited by
programs the run starts (Python opens it close-on-exec), so a child that outlives the run, such
as a redis-server, does not keep the directory locked.

``flock`` on a network filesystem may lock nothing: keep run directories on local disks.

The run also writes ``RUN_DIR/config.json``, the validated config it started with and secrets
masked, the same text ``deepfactor config check`` prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from engine.config import Config
from engine.errors import UsageError
from engine.logging import redact_secrets

LOCK_FILE = "run.lock"
CONFIG_FILE = "config.json"


class RunDirectoryInUseError(UsageError):
    """Another live run holds the directory's lock; the message names the directory and it."""


def resolved_config_text(config: Config) -> str:
    """The validated ``config`` as indented JSON with secrets masked, as ``config check`` shows."""
    shown = redact_secrets(None, "info", msgspec.to_builtins(config))
    return msgspec.json.format(msgspec.json.encode(shown), indent=2).decode() + "\n"


def lock_file(path: Path, mode: int) -> int | None:
    """Open and ``flock`` ``path`` with ``mode`` (non-blocking); return the descriptor, or
    None when another process holds a conflicting lock.

    A run refused after acquiring removes a lock file it created (``release(discard=True)``),
    so a process that opened the file just before would lock a removed file: it sees that
    here (another inode, or none, at the path) and tries again on the current one. No
    ``O_TRUNC``: the record in the file is the holder's to write.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            raise
        opened = os.fstat(fd)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and (current.st_dev, current.st_ino) == (
            opened.st_dev,
            opened.st_ino,
        ):
            return fd
        os.close(fd)


class RunDirectory:
    """The exclusive claim of one run on ``path``; use as a context manager or acquire/release.

    ``option`` is how the user named the directory (``--out``), for messages.
    """

    def __init__(self, path: str | Path, *, option: str = "--out") -> None:
        self.path = Path(path)
        self.option = option
        self._fd: int | None = None
        self._created: list[Path] = []  # what acquire() created, for release(discard=True)
        self._created_lock = False

    @property
    def lock_file(self) -> Path:
        """``RUN_DIR/run.lock``."""
        return self.path / LOCK_FILE

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> RunDirectory:
        """Take the lock and record this process as its holder.

        Raises
        ------
        RunDirectoryInUseError
            Another live process holds it; the message names the directory and the holder.
        UsageError
            The lock file cannot be created or locked.
        """
        if self._fd is not None:
            return self
        shown = f"{self.option} {self.path}"
        lineage = (self.path, *self.path.parents)
        created = [p for p in lineage if not p.exists()]
        created_lock = not self.lock_file.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = self._lock_current_file()
        except OSError as error:
            raise UsageError(
                f"{shown}: cannot lock {LOCK_FILE} ({error.strerror or error})"
            ) from None
        # Only the holder writes, and only once it holds the lock: a refused run must not
        # truncate the record it is about to show.
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_record(), 0)
        self._fd = fd
        self._created = created
        self._created_lock = created_lock
        return self

    def _lock_current_file(self) -> int:
        """Open and lock ``run.lock`` (see :func:`lock_file`), or name its holder."""
        fd = lock_file(self.lock_file, fcntl.LOCK_EX)
        if fd is None:
            holder = describe_holder(self.lock_file.read_bytes())
            raise RunDirectoryInUseError(
                f"{self.option} {self.path}: in use by another run ({holder}); "
                "stop that run, or choose another directory"
            )
        return fd

    def release(self, *, discard: bool = False) -> None:
        """Clear the holder record and drop the lock; the file stays for the next run.

        ``discard``: the run was refused before it started, so also remove the lock file and
        the directories ``acquire`` created, leaving the path as it found it.
        """
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        if discard:  # only what this run created, while still holding the lock
            if self._created_lock:
                with contextlib.suppress(OSError):
                    self.lock_file.unlink()
            for directory in self._created:  # nearest first: children before their parents
                try:
                    directory.rmdir()
                except OSError:
                    break
        os.close(fd)

    def write_config(self, config: Config) -> Path:
        """Write ``config.json`` (replacing an earlier run's) and return its path.

        Raises
        ------
        UsageError
            It cannot be written; the message names the directory.
        """
        target = self.path / CONFIG_FILE
        temporary = target.with_name(f".{CONFIG_FILE}.tmp")
        try:
            temporary.write_text(resolved_config_text(config))
            temporary.replace(target)
        except OSError as error:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise UsageError(
                f"{self.option} {self.path}: cannot write {CONFIG_FILE} ({error.strerror or error})"
            ) from None
        return target

    def __enter__(self) -> RunDirectory:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def holder_record(**extra: Any) -> bytes:
    """What a lock's holder writes into its lock file: pid, host, start time (and ``extra``),
    for ``describe_holder`` to name it to a process that was refused."""
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        **extra,
    }
    return (json.dumps(record) + "\n").encode()


def describe_holder(raw: bytes) -> str:
    """Name the holder recorded in a lock file, in words."""
    try:
        record: Any = json.loads(raw.decode())
        return f"pid {record['pid']} on host {record['host']}, started {record['started']}"
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        # The holder has locked the file but not yet written to it.
        return "holder not recorded yet"
