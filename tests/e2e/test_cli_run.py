"""``deepfactor run SERVICE`` the way a supervisor starts it: refusals with one line and exit 2,
waits that give up naming what is missing (exit 1), JSON log lines naming the service, and the
stop contract (SIGTERM: exit 0; a second signal: 130). The crash test with every service is
tests/e2e/test_crash_processes.py."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

from engine.bus import RedisBus
from services.runtime.account import bind_account, open_account
from tests.cli_process import deepfactor as run_cli
from tests.conftest import delete_namespace

ROOT = Path(__file__).resolve().parents[2]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPFACTOR_")}
    return {**env, "DEEPFACTOR_LOG__LEVEL": "info", **extra}


deepfactor = functools.partial(run_cli, timeout=120)


def start(*arguments: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "services.commands.cli", *arguments],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=handle,
        )  # fmt: skip


def mark_account(redis_url: str, account, run_dir: Path) -> None:
    bus = RedisBus(redis_url, account.namespace, give_up_after_s=5)
    try:
        bind_account(bus, account, run_dir)
    finally:
        bus.close()


def wait_for(condition, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_run_without_a_shared_redis_is_refused_in_one_line(tmp_path):
    result = deepfactor("run", "rebalance", "--out", str(tmp_path / "run"), env=environment())
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "needs a Redis every process of the account can reach" in result.stderr
    assert "[bus] redis_url or --redis-url" in result.stderr
    assert not (tmp_path / "run").exists()


def test_replay_options_are_refused_for_a_consumer(tmp_path, redis_url):
    result = deepfactor(
        "run", "signal", "--synthetic", "--bars", "10", "--redis-url", redis_url,
        "--out", str(tmp_path), env=environment(),
    )  # fmt: skip
    assert result.returncode == 2
    assert "--synthetic, --bars: options of `run market-data`" in result.stderr


def test_a_consumer_gives_up_when_no_account_appears(tmp_path, redis_url):
    result = deepfactor(
        "run", "execution", "--wait", "0.5", "--out", str(tmp_path),
        env=environment(DEEPFACTOR_BUS__REDIS_URL=redis_url),
    )  # fmt: skip
    assert result.returncode == 1
    assert "no paper account (account.json) after 0.5s" in result.stderr
    assert "deepfactor run market-data" in result.stderr
    assert not (tmp_path / "account.json").exists()  # a consumer never opens the account


def test_market_data_opens_the_account_and_gives_up_naming_the_missing_services(
    tmp_path, redis_url
):
    base = f"test-run-{uuid.uuid4().hex[:8]}"
    env = environment(DEEPFACTOR_BUS__REDIS_URL=redis_url, DEEPFACTOR_RUN__NAMESPACE=base)
    try:
        result = deepfactor(
            "run", "market-data", "--synthetic", "--bars", "20", "--wait", "1",
            "--out", str(tmp_path), env=env,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr[-2000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1
        assert (
            "no consumer group of execution, factor-update, rebalance, recorder, signal"
            in (errors[0])
        )
        account = json.loads((tmp_path / "account.json").read_text())
        assert account["namespace"].startswith(base) and account["starts"] == 1
        replay = json.loads((tmp_path / "replay.json").read_text())
        assert replay == {"feed": account["feed"], "periods_per_year": 365.0}
        assert (tmp_path / "config.json").exists()
        client = redis.Redis.from_url(redis_url)
        try:
            assert client.exists(f"{account['namespace']}:bars") == 0  # nothing published
        finally:
            client.close()
    finally:
        account_file = tmp_path / "account.json"
        if account_file.exists():
            delete_namespace(redis_url, json.loads(account_file.read_text())["namespace"])


def test_a_second_process_of_a_service_is_its_standby_and_none_runs_beside_a_paper_run(
    tmp_path, redis_url
):
    env = environment(DEEPFACTOR_BUS__REDIS_URL=redis_url)
    out = tmp_path / "run"
    waiting = start("run", "signal", "--wait", "60", "--out", str(out), env=env, log=tmp_path / "a")
    try:
        wait_for(
            lambda: b"run.waiting_for_account" in (tmp_path / "a").read_bytes(), "the first signal"
        )
        # A second process of the service is a standby: it waits for the first one's lock.
        second = start(
            "run", "signal", "--wait", "60", "--out", str(out), env=env, log=tmp_path / "b"
        )
        wait_for(lambda: b'"run.standby"' in (tmp_path / "b").read_bytes(), "the standby")
        standby = json.loads(
            next(
                line
                for line in (tmp_path / "b").read_bytes().splitlines()
                if b"run.standby" in line
            )
        )
        assert standby["active"].startswith(f"pid {waiting.pid} on host")
        paper = deepfactor("paper", "--synthetic", "--bars", "5", "--out", str(out), env=env)
        assert paper.returncode == 2
        assert "in use by another run (pid " in paper.stderr
        waiting.send_signal(signal.SIGTERM)  # stopped while waiting: a clean exit
        assert waiting.wait(timeout=30) == 0
        # The standby holds the lock now: it waits for the account in turn.
        wait_for(
            lambda: b"run.waiting_for_account" in (tmp_path / "b").read_bytes(), "the takeover"
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    finally:
        for process in (waiting, locals().get("second")):
            if process is not None and process.poll() is None:
                process.kill()


def test_sigterm_commits_and_exits_0_and_a_second_signal_exits_130(tmp_path, redis_url):
    base = f"test-run-{uuid.uuid4().hex[:8]}"
    account = open_account(tmp_path, base, "replay:test")
    mark_account(redis_url, account, tmp_path)  # what the market-data process does
    # Reads block 5 s: the first signal stops the loop only once the read in hand returns.
    env = environment(DEEPFACTOR_BUS__REDIS_URL=redis_url, DEEPFACTOR_BUS__BLOCK_MS="5000")
    log = tmp_path / "signal.log"
    try:
        for signals, expected in ((1, 0), (2, 130)):
            process = start("run", "signal", "--out", str(tmp_path), env=env, log=log)
            try:
                wait_for(
                    lambda n=signals: log.read_text().count('"run.started"') == n,
                    "the service to start",
                )
                time.sleep(0.5)  # in its blocking read
                process.send_signal(signal.SIGTERM)
                if signals == 2:
                    time.sleep(0.3)
                    process.send_signal(signal.SIGINT)
                assert process.wait(timeout=30) == expected
            finally:
                if process.poll() is None:
                    process.kill()
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert {line["service"] for line in lines} == {"signal"}
        events = [line["event"] for line in lines]
        assert events.count("service.stopped") == 1  # the cold stop commits nothing more
        started = next(line for line in lines if line["event"] == "run.started")
        assert started["namespace"] == account.namespace
        assert started["consumer"].startswith("signal-")
    finally:
        delete_namespace(redis_url, account.namespace)
