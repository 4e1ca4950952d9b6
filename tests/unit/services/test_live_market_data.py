"""Live polling through ccxt's real binance class (offline router): only closed candles become
bar sets, each timestamp once, in order, complete unless a symbol will never send it."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from engine.bus import MemoryBus
from engine.data.ccxt_source import CcxtOhlcvSource
from services.daemons.live_market_data import LiveMarketDataService
from tests.fixtures.ccxt_router import BinanceRouter, offline_binance

MINUTE = 60_000
T0 = 1_704_067_200_000  # 2024-01-01T00:00Z


def service(router: BinanceRouter, **kwargs) -> tuple[LiveMarketDataService, MemoryBus]:
    source = CcxtOhlcvSource(
        "binance",
        ["BTC/USDT", "ETH/BTC"],
        "1m",
        exchange=offline_binance(router),
        clock=lambda: router.now_ms / 1000,
        sleep=lambda s: None,
    )
    bus = MemoryBus()
    live = LiveMarketDataService(bus, source, since_ms=T0, now=lambda: router.now_ms, **kwargs)
    return live, bus


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


def opens_of(sets: list) -> list[int]:
    return [int(s.bar_open.timestamp() * 1000) for s in sets]


def test_a_symbol_that_stops_trading_is_left_out_after_the_grace_and_logged_once():
    router = BinanceRouter(now_ms=T0 + 5 * MINUTE + 30_000, listed_ms=T0)
    router.drop("ETHBTC", *(T0 + k * MINUTE for k in range(3, 60)))  # halted from 00:03 on
    live, bus = service(router, grace_bars=2)
    with capture_logs() as logs:
        assert live.poll_once() == 3  # 00:00..00:02 complete; 00:03 and 00:04 still in grace
        router.now_ms += MINUTE  # 00:03 closed at 00:04, over 2 bars ago: published without ETH
        assert live.poll_once() == 1
        for _ in range(5):
            router.now_ms += MINUTE
            assert live.poll_once() == 1  # one bar a minute, ETH absent, nothing held back
    sets = published(bus)
    assert opens_of(sets) == [T0 + k * MINUTE for k in range(9)]  # in order, each once
    assert [s.symbols for s in sets[:3]] == [("BTC/USDT", "ETH/BTC")] * 3
    assert all(s.symbols == ("BTC/USDT",) for s in sets[3:])
    silent = [e for e in logs if e["event"] == "data.symbol_silent"]
    assert len(silent) == 1
    assert silent[0]["symbol"] == "ETH/BTC"
    assert silent[0]["last_candle"].startswith("2024-01-01T00:02")
    assert silent[0]["silent_for_s"] == 210  # from 00:03, when its next bar was due, to 00:06:30
    assert not [e for e in logs if e["event"] == "data.partial_bar_set"]


class HaltingRouter(BinanceRouter):
    """A router whose dropped bars the exchange can backfill later."""

    def backfill(self, market_id: str) -> None:
        self._missing = {key for key in self._missing if key[0] != market_id}


def test_a_symbol_coming_back_does_not_republish_bars_already_published_without_it():
    router = HaltingRouter(now_ms=T0 + 3 * MINUTE + 1, listed_ms=T0)
    router.drop("ETHBTC", *(T0 + k * MINUTE for k in range(3, 60)))
    live, bus = service(router, grace_bars=2)
    with capture_logs() as logs:
        assert live.poll_once() == 3
        router.now_ms = T0 + 8 * MINUTE + 1  # 00:03..00:05 overdue; 00:06, 00:07 in grace
        assert live.poll_once() == 3
        router.backfill("ETHBTC")  # ETH trades again, its 00:03..00:07 bars now served
        assert live.poll_once() == 2  # 00:06, 00:07 complete again; 00:03..00:05 not redone
        router.now_ms += MINUTE
        assert live.poll_once() == 1
        router.drop("ETHBTC", *(T0 + k * MINUTE for k in range(9, 60)))
        router.now_ms += 4 * MINUTE  # a second silence from 00:09 on
        assert live.poll_once() == 2
    sets = published(bus)
    assert opens_of(sets) == [T0 + k * MINUTE for k in range(11)]
    assert [len(s.symbols) for s in sets] == [2, 2, 2, 1, 1, 1, 2, 2, 2, 1, 1]
    silent = [e for e in logs if e["event"] == "data.symbol_silent"]
    assert [e["bar"][11:16] for e in silent] == ["00:03", "00:09"]  # once per silence
    assert [e["event"] for e in logs if e["event"] == "data.symbol_resumed"] == [
        "data.symbol_resumed"
    ]
