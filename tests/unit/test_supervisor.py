"""The supervisor of ``deepfactor up`` on real child processes (small Python programs): restart
with backoff, finished is not failed, the give-up limit, a clean and ordered stop, and a kill
for a child that will not stop."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from engine.config.schema import SupervisorConfig
from services.runtime.run_dir import RunDirectoryInUseError
from services.runtime.supervisor import ChildSpec, Supervisor, SupervisorLock, run_commands

# A service in miniature: runs until SIGTERM, then exits 0.
SLEEPER = (
    sys.executable,
    "-c",
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "time.sleep(60)\n",
)


def python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def settings(**overrides: float) -> SupervisorConfig:
    values = {
        "max_restarts": 5,
        "restart_window_s": 60.0,
        "backoff_initial_s": 0.2,
        "backoff_max_s": 1.0,
        "stop_timeout_s": 5.0,
        **overrides,
    }
    return SupervisorConfig(**values)  # type: ignore[arg-type]


class Running:
    """A supervisor run in a thread, stopped at the end of the ``with``."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.stop = threading.Event()
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.code = self.supervisor.run(self.stop)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the supervisor did not stop"


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_killed_child_is_restarted_after_its_backoff_and_the_others_keep_running() -> None:
    supervisor = Supervisor(
        [ChildSpec("execution", SLEEPER), ChildSpec("signal", SLEEPER)], settings()
    )
    execution, signal_child = supervisor.children
    with capture_logs() as logs, Running(supervisor) as running:
        wait_for(lambda: execution.alive and signal_child.alive)
        first, other = execution.process.pid, signal_child.process.pid
        os.kill(first, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: execution.process.pid != first and execution.alive)
        waited = time.monotonic() - killed_at
        assert signal_child.process.pid == other and signal_child.starts == 1
        assert execution.starts == 2
        assert waited >= 0.2  # backoff_initial_s
    assert running.code == 0  # both stopped by their SIGTERM, exit 0
    exited = [e for e in logs if e["event"] == "supervisor.child_exited"]
    assert len(exited) == 1
    assert exited[0]["child"] == "execution" and exited[0]["reason"] == "killed by SIGKILL"
    assert exited[0]["restart_in_s"] == 0.2


def test_backoff_doubles_with_each_exit_in_the_window_up_to_its_ceiling() -> None:
    supervisor = Supervisor([], settings(backoff_initial_s=1.0, backoff_max_s=5.0))
    assert [supervisor.backoff_s(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_child_that_exits_0_has_finished_and_is_not_restarted() -> None:
    supervisor = Supervisor(
        [ChildSpec("market-data", python("pass")), ChildSpec("signal", SLEEPER)], settings()
    )
    replay = supervisor.children[0]
    with capture_logs() as logs, Running(supervisor):
        wait_for(lambda: replay.finished)
        time.sleep(0.5)  # longer than the backoff: a restart would have happened
        assert replay.starts == 1
    assert [e["child"] for e in logs if e["event"] == "supervisor.child_finished"] == [
        "market-data"
    ]


def test_a_child_gets_its_own_environment_over_the_supervisors() -> None:
    # Exit 0 (finished) only when it sees its own variable and the supervisor's.
    check = (
        "import os; "
        "raise SystemExit(0 if (os.environ['A'], os.environ['B']) == ('own', 'up') else 1)"
    )
    spec = ChildSpec("signal-2", python(check), env={"A": "own"})
    supervisor = Supervisor([spec], settings(max_restarts=0), env={"A": "up", "B": "up"})
    with Running(supervisor):
        wait_for(lambda: supervisor.children[0].finished or supervisor.gave_up is not None)
    assert supervisor.children[0].finished, supervisor.gave_up


def test_more_exits_than_max_restarts_within_the_window_gives_up_and_stops_all() -> None:
    supervisor = Supervisor(
        [ChildSpec("execution", python("raise SystemExit(1)")), ChildSpec("signal", SLEEPER)],
        settings(max_restarts=2, backoff_initial_s=0.05, backoff_max_s=0.1),
    )
    stop = threading.Event()
    with capture_logs() as logs:
        code = supervisor.run(stop)
    assert code == 1
    assert supervisor.children[0].starts == 3  # the first start and two restarts
    assert "execution exited 3 times" in (supervisor.gave_up or "")
    assert supervisor.children[1].process.returncode is not None  # stopped with the rest
    gave_up = [e for e in logs if e["event"] == "supervisor.gave_up"]
    assert gave_up and gave_up[0]["max_restarts"] == 2


def test_exits_outside_the_window_do_not_count_towards_giving_up() -> None:
    supervisor = Supervisor(
        [ChildSpec("execution", python("import time; time.sleep(0.3); raise SystemExit(1)"))],
        settings(max_restarts=1, restart_window_s=0.2, backoff_initial_s=0.0),
    )
    with Running(supervisor):
        wait_for(lambda: supervisor.children[0].starts >= 4)
        assert supervisor.gave_up is None


def test_a_child_that_refuses_to_start_exit_2_is_not_restarted() -> None:
    supervisor = Supervisor(
        [ChildSpec("rebalance", python("raise SystemExit(2)")), ChildSpec("signal", SLEEPER)],
        settings(),
    )
    assert supervisor.run(threading.Event()) == 1
    assert supervisor.children[0].starts == 1
    assert "refused to start" in (supervisor.gave_up or "")


def test_the_replay_is_stopped_and_gone_before_the_consumers_get_their_sigterm(
    tmp_path: Path,
) -> None:
    record = tmp_path / "order.txt"
    # Each writes its name when it receives SIGTERM; the replay takes 0.5 s to stop (its
    # halt must still reach running consumers).
    template = (
        "import signal, sys, time\n"
        "def stop(*_):\n"
        "    time.sleep({delay})\n"
        "    open({path!r}, 'a').write({name!r} + '\\n')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "time.sleep(60)\n"
    )

    def child(name: str, delay: float) -> ChildSpec:
        return ChildSpec(name, python(template.format(delay=delay, path=str(record), name=name)))

    supervisor = Supervisor(
        [child("signal", 0.0), child("market-data", 0.5), child("recorder", 0.0)], settings()
    )
    with Running(supervisor) as running:
        wait_for(lambda: all(c.alive for c in supervisor.children))
        time.sleep(0.5)  # the children have installed their handlers
    assert running.code == 0
    lines = record.read_text().split()
    assert lines[0] == "market-data" and sorted(lines[1:]) == ["recorder", "signal"]


def test_a_child_ignoring_sigterm_is_killed_after_stop_timeout_and_the_stop_is_unclean() -> None:
    stubborn = python(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    )
    supervisor = Supervisor([ChildSpec("signal", stubborn)], settings(stop_timeout_s=0.5))
    with capture_logs() as logs, Running(supervisor) as running:
        wait_for(lambda: supervisor.children[0].alive)
        time.sleep(0.3)
        started = time.monotonic()
    assert time.monotonic() - started < 5
    assert running.code == 1
    assert supervisor.children[0].process.returncode == -signal.SIGKILL
    assert [e["child"] for e in logs if e["event"] == "supervisor.child_killed"] == ["signal"]


def test_the_first_start_of_the_replay_alone_takes_fresh() -> None:
    specs = run_commands(
        ["market-data", "signal"], common=["--out", "d"], replay=["--synthetic"], fresh=True
    )
    replay, signal_spec = specs
    assert replay.first_argv is not None and replay.first_argv[-1] == "--fresh"
    assert "--fresh" not in replay.argv and "--synthetic" in replay.argv
    assert signal_spec.first_argv is None and "--synthetic" not in signal_spec.argv
    supervisor = Supervisor([ChildSpec("market-data", python("pass"), python("pass"))], settings())
    assert supervisor.children[0].spec.first_argv == python("pass")


def test_one_supervisor_per_run_directory(tmp_path: Path) -> None:
    with SupervisorLock(tmp_path):
        with pytest.raises(RunDirectoryInUseError, match="already runs there"):
            with SupervisorLock(tmp_path):
                pass
    with SupervisorLock(tmp_path):  # released
        pass
