"""The live paper path end to end, offline: ccxt's real binance class served by a recorded-shape
router that moves with the wall clock, every service over Redis, APScheduler firing rebalances
in real time. The books must balance and nothing may be left unacknowledged."""

from __future__ import annotations

import threading
import time

from engine.bus import RedisBus
from engine.config import load_config
from engine.data.ccxt_source import CcxtOhlcvSource
from services.paper import run_live_paper
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
