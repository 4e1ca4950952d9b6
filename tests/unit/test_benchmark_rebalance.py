"""Smoke test of benchmarks/rebalance.py: a tiny run writes its JSON with every figure."""

from __future__ import annotations

import json

import structlog

from benchmarks import rebalance


def test_a_tiny_run_writes_every_figure(tmp_path):
    logging_before = structlog.get_config()
    out = tmp_path / "rebalance.json"

    result = rebalance.main(["--sizes", "5", "--samples", "2", "--warmup", "1", "--out", str(out)])

    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    for key in ("p50_ms_5", "p99_ms_5", "cold_ms_5", "build_p50_ms_5", "solve_p50_ms_5"):
        assert written[key] > 0, key
    assert written["p99_ms_5"] >= written["p50_ms_5"]
    figures = written["by_size"]["5"]
    assert len(figures["samples_ms"]) == 2
    assert figures["orders_p50"] > 0  # the timed rebalances traded
    assert written["construction"] == "optimizer" and written["solver"]
    assert written["targets"] == {}  # no target for 5 assets
    assert structlog.get_config() == logging_before  # the run's logging set-up is undone
