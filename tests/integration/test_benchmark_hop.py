"""Smoke test of benchmarks/hop.py: a tiny run of real hop processes writes every figure."""

from __future__ import annotations

import json

from benchmarks import hop


def test_a_tiny_run_writes_every_figure(tmp_path, redis_url):
    out = tmp_path / "hop.json"

    result = hop.main(
        ["--events", "4", "--warmup", "1", "--gap-ms", "0", "--redis-url", redis_url]
        + ["--out", str(out)]
    )

    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    for key in ("hop_p50_ms", "chain1_p50_ms", "chain3_p50_ms", "redis_round_trip_ms"):
        assert written[key] > 0, key
    assert written["hop_p99_ms"] >= written["hop_p50_ms"]
    assert written["chain3_p99_ms"] >= written["chain3_p50_ms"]
    three = written["chains"]["3"]
    assert three["events"] == 4
    assert three["handler_to_handler_samples"] == 8  # two hops between three relays
    assert len(three["entry_id_hop_mean_ms"]) == 3
