"""The kill switch from the command line against a running paper account: `deepfactor halt
--flatten` closes every position and stops new orders, `deepfactor status` shows it, and
`deepfactor resume` lets trading go on. A real `deepfactor paper` process on its private
Redis (found by the commands through the run directory), real CLI processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.commands.cli", *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def status(out: Path, env: dict[str, str]) -> dict:
    result = cli("status", "--json", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def wait_for(condition, out: Path, env: dict[str, str], what: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    current: dict | str = "none yet"
    while time.monotonic() < deadline:
        result = cli("status", "--json", "--out", str(out), env=env)
        if result.returncode != 0:
            # account.json is written before the run's private Redis answers, and before the
            # account is marked in it: not served yet.
            starting = ("no run is serving", "has no data in Redis")
            assert any(text in result.stderr for text in starting), result.stderr[-2000:]
            current = result.stderr.strip()
        else:
            current = json.loads(result.stdout)
            if condition(current):
                return current
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}; last status {current}")


def held(current: dict) -> int:
    return (current.get("portfolio") or {}).get("positions", 0)


def test_halt_flatten_status_and_resume_against_a_running_paper_account(short_tmp):
    out = short_tmp / "account"
    env = {
        **os.environ,
        "DEEPFACTOR_MARKET__SYMBOLS": "8",
        "DEEPFACTOR_SCHEDULE__CRON": "0 0 * * *",  # daily: ticks come often
        "DEEPFACTOR_PORTFOLIO__CONSTRUCTION": "top-k",
        "DEEPFACTOR_PORTFOLIO__TOP_FRACTION": "0.5",
        # Only the kill switch acts on the book in this test.
        "DEEPFACTOR_RISK__ENABLED": "false",
        "DEEPFACTOR_LOG__LEVEL": "warning",
    }
    log = short_tmp / "paper.log"  # a file, not a pipe nobody reads while it runs
    paper = subprocess.Popen(
        [sys.executable, "-m", "services.commands.cli", "paper", "--synthetic", "--bars", "3000",
         "--speed", "12", "--out", str(out)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (out / "account.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        before = wait_for(lambda s: held(s) > 0, out, env, "the account to hold positions")
        assert before["kill_switch"] is None and not before["portfolio"]["halted"]

        halt = cli("halt", "--flatten", "--reason", "e2e test", "--out", str(out), env=env)
        assert halt.returncode == 0, halt.stderr[-2000:]
        assert "halted" in halt.stdout and "closing every position" in halt.stdout
        flat = wait_for(
            lambda s: s["kill_switch"] is not None and held(s) == 0 and s["portfolio"]["halted"],
            out,
            env,
            "the flatten to fill",
        )
        assert flat["kill_switch"]["reason"] == "e2e test" and flat["kill_switch"]["flatten"]
        text = cli("status", "--out", str(out), env=env)
        assert text.returncode == 0 and "yes, since" in text.stdout, text.stdout
        time.sleep(3)  # about 36 bars, 36 daily ticks: none may trade
        assert held(status(out, env)) == 0

        resume = cli("resume", "--reason", "e2e test over", "--out", str(out), env=env)
        assert resume.returncode == 0, resume.stderr[-2000:]
        wait_for(lambda s: s["kill_switch"] is None and held(s) > 0, out, env, "trading to resume")
    finally:
        if paper.poll() is None:
            paper.terminate()
        paper.wait(timeout=120)
    stderr = log.read_text()
    assert paper.returncode == 0, stderr[-3000:]
    assert "kill switch on" in stderr  # the skipped ticks said why

    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    controls = [
        e["payload"]
        for e in events
        if e["type"] == "Control" and e["payload"].get("origin") == "operator"
    ]
    assert [(c["command"], c.get("flatten", False)) for c in controls] == [
        ("halt", True),
        ("resume", False),
    ]
    alerts = [e for e in events if e["type"] == "RiskAlert"]
    assert [a["payload"]["kind"] for a in alerts] == ["kill_switch", "kill_switch"]
    halted_at, resumed_at = (datetime.fromisoformat(a["ts"]) for a in alerts)  # bar times
    orders = [e["payload"] for e in events if e["type"] == "OrderRequest"]
    flatten = [o for o in orders if o["rebalance_id"].startswith("halt-")]
    assert flatten and all(o["reduce_only"] and o["side"] == "sell" for o in flatten)
    scheduled = [datetime.fromisoformat(o["asof"]) for o in orders if o not in flatten]
    assert any(t < halted_at for t in scheduled) and any(t > resumed_at for t in scheduled)
    # Nothing decided while halted. The alerts carry the replay clock when the rebalancer read
    # the control: a tick of that very bar may come before the halt or after the resume (the
    # control and the tick are on different streams), so the bounds themselves are open.
    assert not [t for t in scheduled if halted_at < t < resumed_at]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["limits_acted"] == {"kill_switch": 2}
