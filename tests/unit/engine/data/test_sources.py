"""Every source hands out the same thing: a Panel, equal to what its own loader gives."""

from __future__ import annotations

import numpy as np

from engine.data import SAMPLE_PATH, load_panel, synthetic_panel
from engine.data.ccxt_source import CcxtOhlcvSource
from engine.data.sources import BarSource, CcxtHistorySource, FileSource, SyntheticSource
from tests.fixtures.ccxt_router import BinanceRouter, offline_binance

T0 = 1_704_067_200_000  # 2024-01-01T00:00Z


def test_file_and_synthetic_sources_give_their_loaders_panels():
    sources: list[BarSource] = [FileSource(SAMPLE_PATH), SyntheticSource(4, 30, seed=3)]
    expected = [load_panel(SAMPLE_PATH), synthetic_panel(4, 30, seed=3)]
    for source, panel in zip(sources, expected):
        got = source.panel()
        assert got.symbols == panel.symbols
        np.testing.assert_array_equal(got.close, panel.close)


def test_ccxt_history_source_gives_a_panel_of_closed_candles():
    router = BinanceRouter(now_ms=T0 + 10 * 3_600_000 + 5, listed_ms=T0)
    ccxt_source = CcxtOhlcvSource(
        "binance",
        ["BTC/USDT", "ETH/BTC"],
        "1h",
        exchange=offline_binance(router),
        sleep=lambda s: None,
        clock=lambda: router.now_ms / 1000,
    )
    panel = CcxtHistorySource(ccxt_source, since_ms=T0).panel()
    assert panel.symbols == ("BTC/USDT", "ETH/BTC") and panel.close.shape == (10, 2)
    assert panel.timeframe_label == "1h"
    closes = [float(row[4]) for row in router.candles("BTCUSDT", "1h")]
    np.testing.assert_allclose(panel.close[:, 0], closes)
