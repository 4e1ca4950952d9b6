"""The live paper path end to end, offline: ccxt's real binance class served by a recorded-shape
router that moves with the wall clock, every service over Redis, APScheduler firing rebalances
in real time. The books must balance and nothing may be left unacknowledged."""

from __future__ import annotations

import json
import threading
import time

import redis

from engine.bus import EmbeddedRedis, RedisBus
from engine.bus.redis_streams import RedisDataLostError
from engine.config import load_config
from engine.data.ccxt_source import CcxtOhlcvSource
from services.runtime.paper import run_live_paper
from tests.audit import read_ledger, rebuild_and_compare, terminal_updates_per_order
from tests.conftest import delete_namespace
from tests.fixtures.ccxt_router import BinanceRouter, offline_binance


class WallClockRouter(BinanceRouter):
    """The offline exchange's present is the real present."""

    @property
    def now_ms(self) -> int:
        return int(time.time() * 1000)

    @now_ms.setter
    def now_ms(self, value: int) -> None:
        pass


def test_live_paper_trades_on_polled_candles_and_stops_clean(redis_url, tmp_path):
    router = WallClockRouter(
        now_ms=0, listed_ms=int(time.time() * 1000) // 60_000 * 60_000 - 600 * 60_000
    )
    source = CcxtOhlcvSource(
        "binance",
        ["BTC/USDT", "ETH/BTC", "BNB/BTC", "LTC/BTC"],
        "1m",
        exchange=offline_binance(router),
        sleep=lambda s: None,
    )
    config = load_config(
        None,
        {
            "DEEPFACTOR_BUS__REDIS_URL": redis_url,
            "DEEPFACTOR_BUS__BLOCK_MS": "50",
            "DEEPFACTOR_SCHEDULE__CRON": "",
            "DEEPFACTOR_SCHEDULE__INTERVAL": "2s",
            "DEEPFACTOR_PORTFOLIO__TOP_FRACTION": "0.5",
        },
    )
    stop = threading.Event()
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(
            run=run_live_paper(
                config, source, tmp_path / "run", warmup_bars=300, stop=stop, poll_interval_s=0.2
            )
        )
    )
    worker.start()
    time.sleep(7)
    stop.set()
    worker.join(60)
    run = result["run"]
    bus = RedisBus(redis_url, run.namespace, give_up_after_s=5)
    try:
        ledger = read_ledger(bus)
        assert len(ledger.bars) >= 299
        assert ledger.orders, "a wall-clock rebalance should have traded"
        assert set(terminal_updates_per_order(ledger).values()) == {1}
        assert rebuild_and_compare(ledger, config.portfolio.initial_cash) == len(ledger.snapshots)
        assert run.pending_at_exit == 0 and run.summary["orders"] == len(ledger.orders)
    finally:
        delete_namespace(redis_url, run.namespace)
        bus.close()


def test_live_paper_halts_when_its_redis_data_is_lost(short_tmp, tmp_path):
    # A private server without persistence, flushed mid-run: the run stops with
    # RedisDataLostError within a bound and its summary.json says why.
    router = WallClockRouter(
        now_ms=0, listed_ms=int(time.time() * 1000) // 60_000 * 60_000 - 600 * 60_000
    )
    source = CcxtOhlcvSource(
        "binance", ["BTC/USDT", "ETH/BTC"], "1m", exchange=offline_binance(router),
        sleep=lambda s: None,
    )  # fmt: skip
    with EmbeddedRedis(short_tmp / "ext", appendonly=False) as server:
        config = load_config(
            None,
            {
                "DEEPFACTOR_BUS__REDIS_URL": server.url,
                "DEEPFACTOR_BUS__BLOCK_MS": "50",
                "DEEPFACTOR_SCHEDULE__CRON": "",
                "DEEPFACTOR_SCHEDULE__INTERVAL": "2s",
            },
        )
        stop = threading.Event()
        outcome: dict = {}

        def run() -> None:
            try:
                run_live_paper(
                    config, source, tmp_path / "run", warmup_bars=100, stop=stop,
                    poll_interval_s=0.2,
                )  # fmt: skip
            except RedisDataLostError as error:
                outcome["error"] = error

        worker = threading.Thread(target=run)
        worker.start()
        client = redis.Redis.from_url(server.url)
        try:
            deadline = time.monotonic() + 30
            while not any(key.endswith(b":bars") for key in client.keys()):
                assert time.monotonic() < deadline, "no bar was published"
                time.sleep(0.05)
            client.flushall()
            worker.join(20)
            alive = worker.is_alive()
            leftover = client.keys()
        finally:
            stop.set()
            worker.join(30)
            client.close()
    assert not alive, "the run went on after its data was lost"
    assert "was lost" in str(outcome.get("error")), outcome
    assert not any(key.endswith(b":account") for key in leftover), leftover
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_reason"].startswith("redis data lost"), summary
