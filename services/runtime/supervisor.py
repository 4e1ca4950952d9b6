"""``deepfactor up``: every service of a paper account as its own child process, kept running.

Each child is ``deepfactor run SERVICE`` (``services.runtime.standalone``,
``services.runtime.feed``): the same unit systemd, supervisord or a container would run, so what
``up`` tests is what a deployment runs. The supervisor adds what those managers add:

- Restart with backoff. A child that exits non-zero or is killed is started again after
  ``[supervisor] backoff_initial_s``, doubled for each further exit within
  ``restart_window_s`` (capped at ``backoff_max_s``). More than ``max_restarts`` restarts in
  that window: it gives up and stops the whole stack, exit 1 (a stack missing its execution
  service must not go on deciding trades nobody places). Every exit and restart is logged.
- Finished is not failed. A child that exits 0 without being asked (the replay at the end of
  its data) is done and not restarted; the consumers keep running until ``up`` is stopped.
- One clean stop. The children run in their own process group, so a Ctrl-C in the terminal
  reaches only the supervisor, which sends each child one SIGTERM (a child finishes and
  commits the message in hand, then exits 0), waits ``stop_timeout_s`` at most, then kills
  what is left. A second signal to the supervisor kills the children at once.
- Scale-out. ``[supervisor] signal_instances`` signal children (``signal``, ``signal-2``, ...)
  share the inference load as members of one consumer group (``run_commands``), each
  supervised and restarted on its own.
- No orphans. Each child gets SIGTERM when the supervisor dies, however it dies
  (``engine.process.die_with_parent``), and the kernel drops the children's run-directory
  locks when they exit, so a new ``up`` can start over the same account.

Nothing the supervisor knows is needed to trade or to resume: the children hold their state
in Redis, and ``deepfactor status`` reads their heartbeats there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import structlog

from engine.config.schema import METRICS_SERVICES, SupervisorConfig
from engine.errors import UsageError
from engine.process import die_with_parent
from services.runtime.run_dir import (
    RunDirectoryInUseError,
    describe_holder,
    holder_record,
    lock_file,
)

log = structlog.get_logger("services.runtime.supervisor")

POLL_S = 0.2
LOCK_FILE = "up.lock"
# Stopped before the others: the replay, whose stop is a halt the consumers must still handle.
STOP_FIRST = frozenset({"market-data"})
# A child that exits with this code refused to start (bad arguments, config or data, a run
# directory in use): starting it again would fail the same way.
EXIT_USAGE = 2


@dataclass(frozen=True)
class ChildSpec:
    """How to start one service: ``argv`` for every start but the first, which uses
    ``first_argv`` when given (``run market-data --fresh`` must replace the account once,
    never again on a restart)."""

    name: str
    argv: tuple[str, ...]
    first_argv: tuple[str, ...] | None = None
    # Environment of this child only, over the supervisor's (a signal child's metrics port).
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Child:
    """One supervised service and what its supervisor remembers of it."""

    spec: ChildSpec
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    restart_at: float | None = None
    finished: bool = False
    # Monotonic times of the unexpected exits within the restart window.
    exits: deque[float] = field(default_factory=deque)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def run_commands(
    services: Sequence[str],
    *,
    common: Sequence[str],
    replay: Sequence[str],
    fresh: bool,
    signal_instances: int = 1,
    instance: str = "",
    metrics_port: int | None = None,
) -> list[ChildSpec]:
    """The ``deepfactor run SERVICE`` command of each service: ``common`` options for all,
    ``replay`` options for market-data, whose first start alone takes ``--fresh``.

    ``signal`` runs as ``signal_instances`` children, members of one consumer group (it
    scales out, ``services.runtime.standalone``): the first under the children's instance
    name ``instance`` (``--instance`` or ``[run] instance``; the host name when empty), child
    ``signal-K`` under ``--instance {instance}-K``, so each keeps its consumer name across
    restarts. With ``metrics_port`` (``[metrics] port``, when enabled and no ``process_port``
    is set), child ``signal-K`` serves its metrics on ``metrics_port`` + 8 + K - 2, after the
    ports of the eight services (``MetricsConfig.port_of``), so none collides on one host."""
    instance = instance or socket.gethostname()
    base = (sys.executable, "-m", "services.commands.cli", "run")
    specs = []
    for name in services:
        argv = (*base, name, *common, *(replay if name == "market-data" else ()))
        first = (*argv, "--fresh") if fresh and name == "market-data" else None
        specs.append(ChildSpec(name, argv, first))
        if name == "signal":
            for number in range(2, signal_instances + 1):
                # The last --instance given wins: this one, over one in ``common``.
                extra = (*argv, "--instance", f"{instance}-{number}")
                env = {}
                if metrics_port is not None:
                    port = metrics_port + len(METRICS_SERVICES) + number - 2
                    env = {"DEEPFACTOR_METRICS__PROCESS_PORT": str(port)}
                specs.append(ChildSpec(f"signal-{number}", extra, env=env))
    return specs


class SupervisorLock:
    """``RUN_DIR/up.lock``, held exclusively while ``up`` runs: one supervisor per account."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> SupervisorLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = lock_file(self.path, fcntl.LOCK_EX)
        except OSError as error:
            raise UsageError(
                f"--out {self.path.parent}: cannot lock {LOCK_FILE} ({error})"
            ) from None
        if fd is None:
            holder = describe_holder(self.path.read_bytes())
            raise RunDirectoryInUseError(
                f"--out {self.path.parent}: `deepfactor up` already runs there ({holder})"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_record(), 0)
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def describe_exit(returncode: int) -> str:
    """``exit 1`` or ``killed by SIGKILL``: how a child ended, for logs."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit {returncode}"


class Supervisor:
    """Start ``specs`` as child processes and keep them running until told to stop (module
    docstring)."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        settings: SupervisorConfig,
        *,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children = [Child(spec) for spec in specs]
        self.settings = settings
        self.env = dict(os.environ if env is None else env)
        self.clock = clock
        self.gave_up: str | None = None
        # Set by a second signal: stop waiting for the children, kill them.
        self.hurry = threading.Event()

    def backoff_s(self, recent_exits: int) -> float:
        """The wait before a restart, after ``recent_exits`` exits within the window."""
        initial, ceiling = self.settings.backoff_initial_s, self.settings.backoff_max_s
        return min(ceiling, initial * 2 ** max(0, recent_exits - 1))

    def _start(self, child: Child) -> None:
        spec = child.spec
        argv = spec.first_argv if child.starts == 0 and spec.first_argv else spec.argv
        preexec, _ = die_with_parent()
        child.process = subprocess.Popen(
            list(argv),
            env={**self.env, **spec.env},
            stdin=subprocess.DEVNULL,
            preexec_fn=preexec,
            # Own process group: a terminal's Ctrl-C reaches the supervisor only, which then
            # sends each child exactly one SIGTERM (a second one would be a cold stop).
            process_group=0,
        )
        child.starts += 1
        child.restart_at = None
        log.info(
            "supervisor.child_started",
            child=spec.name,
            pid=child.process.pid,
            start=child.starts,
        )

    def _check(self, child: Child, now: float) -> None:
        """Notice an exit of ``child``, or restart it when its backoff is over."""
        if child.finished:
            return
        if child.process is None or child.restart_at is not None:
            if child.restart_at is not None and now >= child.restart_at:
                self._start(child)
            return
        returncode = child.process.poll()
        if returncode is None:
            return
        name, pid = child.spec.name, child.process.pid
        if returncode == 0:
            child.finished = True
            log.info("supervisor.child_finished", child=name, pid=pid)
            return
        if returncode == EXIT_USAGE:
            self.gave_up = f"{name} refused to start (exit {EXIT_USAGE}: see its error above)"
            log.error("supervisor.gave_up", child=name, pid=pid, reason=self.gave_up)
            return
        window = self.settings.restart_window_s
        child.exits.append(now)
        while child.exits and now - child.exits[0] > window:
            child.exits.popleft()
        recent = len(child.exits)
        if recent > self.settings.max_restarts:
            self.gave_up = (
                f"{name} exited {recent} times within {window:g}s ({describe_exit(returncode)} "
                f"last); [supervisor] max_restarts = {self.settings.max_restarts}"
            )
            log.error(
                "supervisor.gave_up",
                child=name,
                pid=pid,
                exits_in_window=recent,
                window_s=window,
                max_restarts=self.settings.max_restarts,
                reason=describe_exit(returncode),
            )
            return
        delay = self.backoff_s(recent)
        child.restart_at = now + delay
        log.warning(
            "supervisor.child_exited",
            child=name,
            pid=pid,
            returncode=returncode,
            reason=describe_exit(returncode),
            restart_in_s=delay,
            exits_in_window=recent,
        )

    def run(self, stop: threading.Event) -> int:
        """Supervise until ``stop`` is set, or until it gives up; return the exit code: 0
        after a clean stop, 1 if it gave up or a child had to be killed."""
        log.info(
            "supervisor.starting",
            children=[c.spec.name for c in self.children],
            max_restarts=self.settings.max_restarts,
            restart_window_s=self.settings.restart_window_s,
        )
        try:
            for child in self.children:
                self._start(child)
            while not stop.wait(POLL_S) and self.gave_up is None:
                now = self.clock()
                for child in self.children:
                    self._check(child, now)
                if all(c.finished for c in self.children):
                    log.info("supervisor.all_finished")
                    break
        finally:
            clean = self.stop_children()
        return 1 if self.gave_up is not None or not clean else 0

    def stop_children(self) -> bool:
        """Stop every live child, producers first (``STOP_FIRST``: the replay's stop halts
        the account and waits until the consumers have handled that, so they must still
        run), then the rest; SIGTERM each, wait ``stop_timeout_s`` in all at most (less if
        ``hurry`` is set: a second signal), kill what is left. Return whether every child
        stopped by itself (exit 0, or SIGTERM's default action if it had no handler yet)."""
        live = [c for c in self.children if c.alive]
        log.info("supervisor.stopping", children=[c.spec.name for c in live])
        deadline = self.clock() + self.settings.stop_timeout_s
        first = [c for c in live if c.spec.name in STOP_FIRST]
        for stage in (first, [c for c in live if c not in first]):
            for child in stage:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            waiting = list(stage)
            while waiting and self.clock() < deadline and not self.hurry.is_set():
                waiting = [c for c in waiting if c.alive]
                if waiting:
                    time.sleep(0.05)
        clean = True
        for child in live:
            process = child.process
            assert process is not None
            if process.poll() is None:
                process.kill()
                process.wait()
                clean = False
                log.error(
                    "supervisor.child_killed",
                    child=child.spec.name,
                    pid=process.pid,
                    reason="second signal"
                    if self.hurry.is_set()
                    else f"still running {self.settings.stop_timeout_s:g}s after SIGTERM",
                )
                continue
            # Killed by our SIGTERM: a child still starting (no handler yet) had done nothing.
            if process.returncode not in (0, -signal.SIGTERM):
                clean = False
            log.info(
                "supervisor.child_stopped",
                child=child.spec.name,
                pid=process.pid,
                returncode=process.returncode,
                reason=describe_exit(process.returncode),
            )
        log.info("supervisor.stopped", clean=clean)
        return clean
