"""Live polling through ccxt's real binance class (offline router): only closed candles become
bar sets, each timestamp once, in order, complete unless a symbol will never send it."""

from __future__ import annotations

import pytest

from engine.bus import MemoryBus
from engine.data.ccxt_source import CcxtOhlcvSource
from services.live_market_data import LiveMarketDataService
from tests.fixtures.ccxt_router import BinanceRouter, offline_binance

MINUTE = 60_000
T0 = 1_704_067_200_000  # 2024-01-01T00:00Z


def service(router: BinanceRouter) -> tuple[LiveMarketDataService, MemoryBus]:
    source = CcxtOhlcvSource(
        "binance",
        ["BTC/USDT", "ETH/BTC"],
        "1m",
        exchange=offline_binance(router),
        clock=lambda: router.now_ms / 1000,
        sleep=lambda s: None,
    )
    bus = MemoryBus()
    return LiveMarketDataService(bus, source, since_ms=T0), bus


def published(bus: MemoryBus) -> list:
    return [d.event.payload for d in bus.consumer("probe", "p", ["bars"]).read(10_000)]


def test_only_closed_candles_are_published_once_and_in_order():
    router = BinanceRouter(now_ms=T0 + 5 * MINUTE + 30_000, listed_ms=T0)
    live, bus = service(router)
    assert live.poll_once() == 5  # 00:00..00:04 closed; 00:05 still forming
    router.now_ms += 2 * MINUTE
    assert live.poll_once() == 2
    assert live.poll_once() == 0
    sets = published(bus)
    opens = [int(s.bar_open.timestamp() * 1000) for s in sets]
    assert opens == [T0 + k * MINUTE for k in range(7)]
    assert all(s.symbols == ("BTC/USDT", "ETH/BTC") for s in sets)
    expected = {row[0]: row for row in router.candles("BTCUSDT", "1m")}
    for bar_set in sets:
        row = expected[int(bar_set.bar_open.timestamp() * 1000)]
        assert bar_set.close[0] == pytest.approx(float(row[4]))


def test_a_symbol_missing_a_candle_does_not_hold_the_others_back_forever():
    router = BinanceRouter(now_ms=T0 + 4 * MINUTE + 1, listed_ms=T0)
    router.drop("ETHBTC", T0 + 2 * MINUTE)
    live, bus = service(router)
    assert live.poll_once() == 4
    sets = published(bus)
    assert [len(s.symbols) for s in sets] == [2, 2, 1, 2]
    assert sets[2].symbols == ("BTC/USDT",)
