"""A paper account run as six processes (``deepfactor run SERVICE``) whose Redis loses its data
(flushed: what a restart without persistence leaves): every process halts loudly (exit 1 and an
``error:`` line saying the data was lost), within a bound, writing nothing more into Redis; the
recorder's summary.json says why. Started again, the account is refused; ``--fresh`` replaces it.

The Redis is a private server without persistence (never the shared one).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from engine.bus import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[2]
CONSUMERS = ("factor-update", "signal", "rebalance", "execution", "recorder")


def command(service: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "services.commands.cli",
        "run",
        service,
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture
def server(short_tmp: Path):
    with EmbeddedRedis(short_tmp / "ext", appendonly=False) as embedded:
        yield embedded


def test_every_process_halts_when_the_redis_data_is_lost(tmp_path: Path, server) -> None:
    out = tmp_path / "run"
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {
        **{k: v for k, v in __import__("os").environ.items() if not k.startswith("DEEPFACTOR_")},
        "DEEPFACTOR_BUS__REDIS_URL": server.url,
        "DEEPFACTOR_BUS__BLOCK_MS": "50",
        "DEEPFACTOR_RUN__NAMESPACE": f"run-faults-{uuid.uuid4().hex[:8]}",
        "DEEPFACTOR_MARKET__SYMBOLS": "6",
        "DEEPFACTOR_SCHEDULE__CRON": "0 0 * * MON,THU",
        "DEEPFACTOR_LOG__LEVEL": "warning",
    }
    processes: dict[str, subprocess.Popen] = {}
    client = redis.Redis.from_url(server.url)
    try:
        for service in ("market-data", *CONSUMERS):
            extra = ("--synthetic", "--bars", "300", "--speed", "40")
            with (logs / f"{service}.log").open("wb") as log:
                processes[service] = subprocess.Popen(
                    command(service, out, *(extra if service == "market-data" else ())),
                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log,
                )  # fmt: skip
        deadline = time.monotonic() + 90
        namespace = None
        while True:
            assert time.monotonic() < deadline, "the account never reached 20 bars"
            assert all(p.poll() is None for p in processes.values()), "a process ended early"
            if namespace is None and (out / "account.json").exists():
                namespace = json.loads((out / "account.json").read_text())["namespace"]
            if namespace and client.xlen(f"{namespace}:bars") >= 20:
                break
            time.sleep(0.05)
        client.flushall()
        flushed = time.monotonic()
        codes = {name: p.wait(timeout=30) for name, p in processes.items()}
        took = time.monotonic() - flushed
        leftover = {key.decode(): client.type(key).decode() for key in client.keys()}
        groups = {k: client.xinfo_groups(k) for k, kind in leftover.items() if kind == "stream"}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        client.close()
    assert took < 20, took
    assert codes == dict.fromkeys(codes, 1), codes
    for service in processes:
        stderr = (logs / f"{service}.log").read_text()
        lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, (service, stderr[-2000:])
        assert "was lost" in lines[0] and namespace in lines[0], (service, lines[0])
    # Nothing written after the loss: no group recreated, no mark, no stream.
    assert not any(groups.values()), groups
    assert not leftover, leftover
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_reason"].startswith("redis data lost"), summary
    assert 20 <= summary["bars"] < 300

    # The market-data process started again refuses the account, offering --fresh ...
    again = subprocess.run(
        command("market-data", out, "--synthetic", "--bars", "30", "--wait", "5"),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 1, again.stderr[-3000:]
    assert "account.json says paper account" in again.stderr and "--fresh" in again.stderr
    # ... and so does a consumer.
    consumer = subprocess.run(
        command("signal", out, "--wait", "5"), cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert consumer.returncode == 1, consumer.stderr[-3000:]
    assert "was lost" in consumer.stderr and "--fresh" in consumer.stderr
