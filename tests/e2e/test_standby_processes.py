"""Hot standbys take over: a paper account's execution and rebalance processes each have a
second instance, started on another run directory (as on another host sharing the Redis)
under another consumer name. The active ones are killed with SIGKILL in the middle of the
replay and never restarted; the standbys take their locks, adopt the messages they left
pending and finish the account. From the ledger: no order requested twice, no fill twice,
every order in exactly one terminal state, the books balance at every snapshot, every group
caught up, nothing dead-lettered."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import redis

from engine.bus import RedisBus
from tests.audit import read_ledger
from tests.conftest import delete_namespaces
from tests.e2e.test_crash_processes import (
    CONSUMERS,
    ROOT,
    SETTINGS,
    Account,
    Outcome,
    assert_every_group_caught_up,
    check_books,
    namespace_of,
)

BARS = 160
STANDBYS = ("execution", "rebalance")


def test_standbys_on_another_directory_take_over_killed_services(tmp_path, redis_url) -> None:
    base = f"standby-{uuid.uuid4().hex[:8]}"
    out, elsewhere = tmp_path / "host-a", tmp_path / "host-b"
    env = {**os.environ, **SETTINGS, "DEEPFACTOR_BUS__REDIS_URL": redis_url}
    env["DEEPFACTOR_RUN__NAMESPACE"] = base
    env["DEEPFACTOR_RUN__LEASE_TTL_S"] = "2"
    account = Account(out, env, BARS)
    client = redis.Redis.from_url(redis_url)
    standbys: dict[str, subprocess.Popen] = {}
    logs = tmp_path / "host-b-logs"
    logs.mkdir()
    try:
        for service in CONSUMERS:
            account.start(service)
        account.start("market-data")
        namespace = namespace_of(out)
        for service in STANDBYS:
            account.wait_running(service)  # the first instances are the active ones
        elsewhere.mkdir()
        shutil.copy(out / "account.json", elsewhere / "account.json")
        for service in STANDBYS:
            command = [sys.executable, "-m", "services.commands.cli", "run", service]
            command += ["--out", str(elsewhere), "--instance", "host-b"]
            with (logs / f"{service}.log").open("ab") as log:
                standbys[service] = subprocess.Popen(
                    command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log
                )
        for service in STANDBYS:  # each one waits for its service's lock
            deadline = time.monotonic() + 120
            while '"service.standby"' not in (logs / f"{service}.log").read_text():
                assert standbys[service].poll() is None, (logs / f"{service}.log").read_text()
                assert time.monotonic() < deadline, f"{service} never became a standby"
                time.sleep(0.05)
        replay = account.processes["market-data"]
        for victim, at in (("execution", 50), ("rebalance", 100)):
            while client.xlen(f"{namespace}:bars") < at:
                assert replay.poll() is None, account.log_tail("market-data")
                time.sleep(0.002)
            account.kill(victim)  # and never started again: the standby must take over
        assert replay.wait(timeout=300) == 0, account.log_tail("market-data")
        assert_every_group_caught_up(client, namespace)
        for service in STANDBYS:
            text = (logs / f"{service}.log").read_text()
            events = [json.loads(line)["event"] for line in text.splitlines()]
            assert events.index("service.standby") < events.index("service.lease_acquired")
            assert "run.started" in events, text[-2000:]
            standbys[service].send_signal(15)
            assert standbys[service].wait(timeout=60) == 0
        for service in set(CONSUMERS) - set(STANDBYS):
            account.processes[service].send_signal(15)
            assert account.processes[service].wait(timeout=60) == 0
        assert_every_group_caught_up(client, namespace)
        bus = RedisBus(redis_url, namespace, give_up_after_s=5)
        try:
            ledger = read_ledger(bus)
            assert bus.dead_letters() == []
        finally:
            bus.close()
        summary = json.loads((out / "summary.json").read_text())
        check_books(Outcome(namespace, ledger, summary, summary), BARS)
        assert len(ledger.orders) > 0
    finally:
        account.close()
        for process in standbys.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        client.close()
        delete_namespaces(redis_url, base)
