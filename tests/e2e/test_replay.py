"""``deepfactor replay RUN_DIR`` re-runs a paper run's recorded market events through the
services and finds exactly what the run recorded: for a run to its end, for an account killed
with SIGKILL and resumed, and not for a log whose fill was tampered with.

Real processes (``deepfactor paper``, ``deepfactor replay``) on a real Redis."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import delete_namespaces
from tests.e2e.test_paper_resume import BARS, environment, kill_after_bars, run_to_end

ROOT = Path(__file__).resolve().parents[2]
REPLAY_ENV = {k: v for k, v in os.environ.items() if not k.startswith("DEEPFACTOR_")}


def replay(run_dir: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.commands.cli", "replay", str(run_dir), *options],
        cwd=ROOT,
        env=REPLAY_ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )


def logged(run_dir: Path) -> list[dict]:
    """The log's events, each id once (first line), read with json alone."""
    seen: set[str] = set()
    events = []
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["id"] not in seen:
            seen.add(event["id"])
            events.append(event)
    return events


def business_ids(events: list[dict], event_type: str, key: str) -> set[str]:
    return {e["payload"][key] for e in events if e["type"] == event_type}


@pytest.fixture(scope="module")
def recorded(redis_url, tmp_path_factory) -> Iterator[Path]:
    """A paper run of 120 bars to its end, with its run directory."""
    base = f"test-replay-{uuid.uuid4().hex[:8]}"
    out = tmp_path_factory.mktemp("replay") / "run"
    try:
        run_to_end(out, environment(redis_url, base), bars=120)
        yield out
    finally:
        delete_namespaces(redis_url, base)


def test_a_finished_run_replays_with_every_order_and_fill_found_again(recorded):
    events = logged(recorded)
    orders = business_ids(events, "OrderRequest", "client_order_id")
    fills = business_ids(events, "Fill", "fill_id")
    summary = json.loads((recorded / "summary.json").read_text())
    assert len(orders) == summary["orders"] > 0
    assert len(fills) == summary["fills"] > 0
    assert sum(e["type"] == "BarSet" for e in events) == 120

    result = replay(recorded)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert f"{len(orders)} compared ({len(orders)} recorded, {len(orders)} replayed)" in (
        result.stdout
    )
    assert f"{len(fills)} compared ({len(fills)} recorded, {len(fills)} replayed)" in result.stdout
    assert result.stdout.rstrip().endswith("identical")

    report = json.loads(replay(recorded, "--json").stdout)
    assert report["identical"] is True and report["differences"] == []
    assert report["orders"] == {
        "compared": len(orders),
        "recorded": len(orders),
        "replayed": len(orders),
    }
    assert report["fills"]["compared"] == len(fills)
    assert report["fed"] == {
        "bars": 120,
        "ticks": sum(e["type"] == "RebalanceDue" for e in events),
        "controls": 1,  # the halt at the end of the data
    }
    final = report["final_snapshot"]
    assert final["recorded"] == final["replayed"]
    assert final["recorded"]["equity"] == pytest.approx(summary["final_equity"], rel=1e-12)


def test_a_tampered_fill_price_is_found_and_named(recorded, tmp_path):
    run_dir = tmp_path / "tampered"
    shutil.copytree(recorded, run_dir)
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    fill_id = next(json.loads(line) for line in lines if '"type":"Fill"' in line)["payload"][
        "fill_id"
    ]
    edited = []
    for line in lines:
        event = json.loads(line)
        if event["type"] == "Fill" and event["payload"]["fill_id"] == fill_id:
            recorded_price = event["payload"]["price"]
            event["payload"]["price"] = recorded_price * 1.001
            line = json.dumps(event, separators=(",", ":"))
        edited.append(line)
    (run_dir / "events.jsonl").write_text("\n".join(edited) + "\n")

    result = replay(run_dir)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert "1 difference(s):" in result.stdout
    assert f"fill {fill_id}: price differs: recorded {recorded_price * 1.001!r}" in result.stdout

    report = json.loads(replay(run_dir, "--json").stdout)
    assert report["identical"] is False
    assert report["differences"] == [
        {
            "kind": "fill",
            "id": fill_id,
            "problem": "different",
            "field": "price",
            "recorded": recorded_price * 1.001,
            "replayed": recorded_price,
        }
    ]


def test_a_missing_event_log_or_config_is_a_bad_run_directory(recorded, tmp_path):
    run_dir = tmp_path / "partial"
    shutil.copytree(recorded, run_dir)
    (run_dir / "events.jsonl").unlink()
    result = replay(run_dir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: RUN_DIR {run_dir}: no events.jsonl (not the directory of a paper run that "
        "keeps its event log)"
    ]
    shutil.copy(recorded / "events.jsonl", run_dir / "events.jsonl")
    (run_dir / "config.json").unlink()
    result = replay(run_dir, "--json")
    assert result.returncode == 2 and result.stdout == ""
    assert "no config.json" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert replay(tmp_path / "nowhere").returncode == 2


def test_an_account_killed_with_sigkill_and_resumed_replays_with_no_difference(redis_url, tmp_path):
    base = f"test-replay-kill-{uuid.uuid4().hex[:8]}"
    env = environment(redis_url, base)
    out = tmp_path / "killed"
    try:
        for bars in (40, 100):
            kill_after_bars(out, env, redis_url, bars)
        run_to_end(out, env)
    finally:
        delete_namespaces(redis_url, base)

    events = logged(out)
    summary = json.loads((out / "summary.json").read_text())
    # Nothing lost across the kills, nothing doubled once read by event id.
    assert sum(e["type"] == "BarSet" for e in events) == BARS
    assert len(business_ids(events, "OrderRequest", "client_order_id")) == summary["orders"] > 0
    assert len(business_ids(events, "Fill", "fill_id")) == summary["fills"] > 0
    controls = Counter(e["payload"]["command"] for e in events if e["type"] == "Control")
    assert controls == {"resume": 2, "halt": 1}

    result = replay(out, "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0, json.dumps(report["differences"][:20], indent=1)
    assert report["identical"] is True
    assert report["fed"]["controls"] == 3
    assert report["orders"]["compared"] == summary["orders"]
    assert report["fills"]["compared"] == summary["fills"]


def test_an_order_the_log_lacks_is_extra_and_a_fill_only_the_log_has_is_missing(recorded, tmp_path):
    from services.commands.replay import load_recorded_run
    from services.commands.replay import replay as replay_run

    run_dir = tmp_path / "edited"
    shutil.copytree(recorded, run_dir)
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    dropped = next(json.loads(line) for line in lines if '"type":"OrderRequest"' in line)
    order_id = dropped["payload"]["client_order_id"]
    fill = next(json.loads(line) for line in lines if '"type":"Fill"' in line)
    invented = {**fill, "id": "f" * 32, "payload": {**fill["payload"], "fill_id": "invented-f1"}}
    kept = [
        line
        for line in lines
        if '"type":"OrderRequest"' not in line or f'"client_order_id":"{order_id}"' not in line
    ]
    kept.append(json.dumps(invented, separators=(",", ":")))
    (run_dir / "events.jsonl").write_text("\n".join(kept) + "\n")

    report = replay_run(load_recorded_run(run_dir))
    assert [(d.kind, d.id, d.problem) for d in report.differences] == [
        ("order", order_id, "extra"),
        ("fill", "invented-f1", "missing"),
    ]
    assert report.orders["recorded"] == report.orders["replayed"] - 1
    assert report.fills["recorded"] == report.fills["replayed"] + 1
    assert f"order {order_id}: extra (replayed, not recorded)" in report.text()
