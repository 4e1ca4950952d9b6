"""Smoke test of benchmarks/soak.py: a small soak (20 assets, 4 kills) kills, sees each restart,
audits the account and writes every figure. Slow (about a minute): ``make test-slow``."""

from __future__ import annotations

import json

import pytest
import redis

from benchmarks import soak

pytestmark = pytest.mark.slow


def test_a_small_soak_kills_restarts_audits_and_writes_its_figures(redis_url, tmp_path):
    results = tmp_path / "soak.json"
    arguments = ["--assets", "20", "--kills", "4", "--duration-s", "20", "--seed", "3"]
    arguments += ["--speed", "max", "--bars", "400", "--redis-url", redis_url]
    arguments += ["--out", str(tmp_path / "run"), "--results", str(results)]

    soak.main(arguments)

    written = json.loads(results.read_text())
    assert written["failure"] is None
    assert written["kills"] == 4 and sum(written["restarts"].values()) == 4
    assert [k["at_s"] for k in written["kill_log"]] == [k.at_s for k in soak.draw_kills(3, 4, 20)]
    for figure in ("lost", "duplicated", "duplicated_fills", "unbalanced", "not_one_terminal"):
        assert written[figure] == 0, figure
    assert written["dead_letters"] == 0 and written["up_exit_code"] == 0
    assert written["bars"] == 400 and written["orders"] > 0
    assert written["peak_rss_mb"] > 0 and set(written["peak_rss_mb_by_process"]) >= set(
        soak.SERVICES
    )
    client = redis.Redis.from_url(redis_url)
    try:  # the soak deleted its account's keys
        base = written["namespace_base"]
        assert list(client.scan_iter(match=f"{base}-*")) == []
    finally:
        client.close()
