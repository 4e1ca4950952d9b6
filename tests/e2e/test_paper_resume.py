"""A paper account survives kill -9: the same command started again continues the account from
where it stopped and ends exactly where the uninterrupted run ends, with nothing doubled.

Real processes (``deepfactor paper``) on a real Redis; each run is killed with SIGKILL once a
chosen number of bars is in its bars stream, then started again with the same command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import redis

from engine.bus import RedisBus
from tests.audit import read_ledger, rebuild_and_compare
from tests.conftest import delete_namespaces

ROOT = Path(__file__).resolve().parents[2]
BARS = 160


def paper_command(out: Path, speed: str, bars: int = BARS) -> list[str]:
    return [
        sys.executable, "-m", "services.commands.cli", "paper", "--synthetic", "--bars", str(bars),
        "--speed", speed, "--out", str(out),
    ]  # fmt: skip


def environment(redis_url: str, namespace: str) -> dict[str, str]:
    return {
        **os.environ,
        "DEEPFACTOR_BUS__REDIS_URL": redis_url,
        "DEEPFACTOR_BUS__BLOCK_MS": "50",
        "DEEPFACTOR_RUN__NAMESPACE": namespace,
        "DEEPFACTOR_MARKET__SYMBOLS": "8",
        "DEEPFACTOR_SCHEDULE__CRON": "0 0 * * MON,THU",
        "DEEPFACTOR_PORTFOLIO__TOP_FRACTION": "0.3",
        "DEEPFACTOR_LOG__LEVEL": "warning",
    }


def run_to_end(out: Path, env: dict[str, str], bars: int = BARS) -> subprocess.CompletedProcess:
    result = subprocess.run(
        paper_command(out, "max", bars),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def kill_after_bars(out: Path, env: dict[str, str], redis_url: str, bars: int) -> None:
    """Start the run at a slow pace and SIGKILL it once ``bars`` bars are in its stream."""
    process = subprocess.Popen(
        paper_command(out, "25"), cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            account = out / "account.json"
            if account.exists():
                namespace = json.loads(account.read_text())["namespace"]
                if client.xlen(f"{namespace}:bars") >= bars:
                    break
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail(f"the run never reached {bars} bars")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        client.close()
        if process.poll() is None:
            process.kill()


def ledger_of(out: Path, redis_url: str):
    namespace = json.loads((out / "account.json").read_text())["namespace"]
    bus = RedisBus(redis_url, namespace, give_up_after_s=5)
    try:
        return read_ledger(bus)
    finally:
        bus.close()


def test_an_account_killed_three_times_ends_where_the_uninterrupted_run_ends(redis_url, tmp_path):
    base = f"test-resume-{uuid.uuid4().hex[:8]}"
    env = environment(redis_url, base)
    try:
        run_to_end(tmp_path / "straight", env)
        expected = json.loads((tmp_path / "straight" / "summary.json").read_text())

        out = tmp_path / "killed"
        for bars in (25, 70, 120):
            kill_after_bars(out, env, redis_url, bars)
        result = run_to_end(out, env)
        summary = json.loads((out / "summary.json").read_text())
        account = json.loads((out / "account.json").read_text())

        assert account["starts"] == 4 and summary["restarts"] == 3
        assert "account continued; 3 restart(s)" in result.stdout
        assert summary["bars"] == expected["bars"] == BARS
        assert summary["orders"] == expected["orders"] > 0
        assert summary["fills"] == expected["fills"]
        assert summary["final_equity"] == pytest.approx(expected["final_equity"], rel=1e-9)
        assert summary["max_drawdown"] == pytest.approx(expected["max_drawdown"], rel=1e-9)

        ledger = ledger_of(out, redis_url)
        straight = ledger_of(tmp_path / "straight", redis_url)
        requested = Counter(o.client_order_id for o in ledger.orders)
        assert [c for c, n in requested.items() if n > 1] == []
        assert Counter(f.fill_id for f in ledger.fills) == Counter(
            f.fill_id for f in straight.fills
        )
        assert [(o.client_order_id, o.side, round(o.quantity, 9)) for o in ledger.orders] == [
            (o.client_order_id, o.side, round(o.quantity, 9)) for o in straight.orders
        ]
        assert rebuild_and_compare(ledger, 1_000_000.0) >= BARS
    finally:
        delete_namespaces(redis_url, base)
