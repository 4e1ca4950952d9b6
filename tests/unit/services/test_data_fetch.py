"""``fetch_to_file``: ccxt history into a long-format file that ``load_panel`` reads back as is.

The exchange is ccxt's real ``binance`` class on an offline router (see tests/fixtures).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import ccxt
import numpy as np
import pandas as pd
import pytest
from structlog.testing import capture_logs

from engine.data import load_panel
from engine.errors import DataError
from services.commands.data_fetch import fetch_to_file, parse_utc_ms
from tests.fixtures.ccxt_router import (
    BinanceRouter,
    offline_binance,
    routed_binance_class,
)

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)
NOW = T0 + 250 * HOUR + 30 * 60_000
SYMBOLS = {"BTC/USDT": "BTCUSDT", "ETH/BTC": "ETHBTC"}


@pytest.fixture
def router() -> BinanceRouter:
    return BinanceRouter(now_ms=NOW, listed_ms=T0)


def fetch(router: BinanceRouter, out, since: Any = "2024-01-01", **options: Any) -> dict[str, Any]:
    options.setdefault("exchange", offline_binance(router))
    return fetch_to_file(
        "binance",
        list(SYMBOLS),
        "1h",
        since,
        out,
        clock=lambda: router.now_ms / 1000,
        sleep=lambda seconds: None,
        **options,
    )


@pytest.mark.parametrize("name", ["bars.parquet", "bars.csv", "bars.csv.gz"])
def test_written_file_loads_back_with_the_same_values(tmp_path, router, name):
    out = tmp_path / "nested" / name

    with capture_logs() as logs:
        summary = fetch(router, out)

    panel = load_panel(out)
    assert panel.symbols == tuple(SYMBOLS)
    assert panel.n_bars == 250 and panel.timeframe == np.timedelta64(HOUR, "ms")
    assert panel.bar_open[0] == np.datetime64("2024-01-01T00:00", "ms")
    for column, market_id in enumerate(SYMBOLS.values()):
        expected = np.array(router.candles(market_id, "1h"))
        for index, name in enumerate(("open", "high", "low", "close", "volume"), start=1):
            np.testing.assert_array_equal(
                getattr(panel, name)[:, column], expected[:, index], err_msg=name
            )
    assert summary["rows"] == 500 and summary["symbols"] == 2
    assert (summary["first"], summary["last"]) == ("2024-01-01T00:00:00Z", "2024-01-11T09:00:00Z")
    assert summary["unclosed_dropped"] == 2 and summary["gaps"] == summary["rejected"] == 0
    [fetched] = [e for e in logs if e["event"] == "data.fetched"]
    counted = ("rows", "symbols", "gaps", "rejected", "duplicates")
    assert [fetched[name] for name in counted] == [500, 2, 0, 0, 0]
    assert list(out.parent.iterdir()) == [out]  # no partial file left beside it


def test_file_holds_the_long_format_columns_in_utc(tmp_path, router):
    out = tmp_path / "bars.parquet"
    fetch(router, out, until="2024-01-01T03:00Z")

    frame = pd.read_parquet(out)

    assert list(frame.columns) == ["timestamp", "symbol", "open", "high", "low", "close", "volume"]
    assert str(frame["timestamp"].dt.tz) == "UTC"
    assert list(frame["symbol"]) == ["BTC/USDT", "ETH/BTC"] * 3


def test_summary_counts_what_the_hygiene_found(tmp_path, router):
    router.drop("ETHBTC", T0 + 5 * HOUR, T0 + 6 * HOUR)
    router.duplicate("BTCUSDT", T0 + 7 * HOUR)
    router.corrupt("BTCUSDT", T0 + 9 * HOUR, "high_below_low")
    router.fail(2, "-1003")
    out = tmp_path / "bars.csv.gz"

    with capture_logs() as logs:
        summary = fetch(router, out, until="2024-01-02")

    assert {
        k: summary[k] for k in ("rows", "gaps", "missing_bars", "rejected", "duplicates", "retries")
    } == {
        "rows": 24 + 24 - 2 - 1,
        "gaps": 2,
        "missing_bars": 3,
        "rejected": 1,
        "duplicates": 1,
        "retries": 2,
    }
    assert summary["rows_per_symbol"] == {"BTC/USDT": 23, "ETH/BTC": 22}
    assert [(e["symbol"], e["from"], e["to"]) for e in logs if e["event"] == "data.gap"] == [
        ("BTC/USDT", "2024-01-01T09:00:00Z", "2024-01-01T10:00:00Z"),
        ("ETH/BTC", "2024-01-01T05:00:00Z", "2024-01-01T07:00:00Z"),
    ]
    panel = load_panel(out)
    assert np.isnan(panel.close[5:7, 1]).all() and np.isnan(panel.close[9, 0])


def test_symbols_may_be_one_comma_separated_string(tmp_path, router):
    summary = fetch_to_file(
        "binance",
        "BTC/USDT, ETH/BTC",
        "1h",
        "2024-01-01",
        tmp_path / "bars.parquet",
        until="2024-01-01T05:00",
        exchange=offline_binance(router),
        clock=lambda: NOW / 1000,
    )

    assert summary["rows_per_symbol"] == {"BTC/USDT": 5, "ETH/BTC": 5}


def test_the_cli_call_builds_a_rate_limited_exchange(tmp_path, monkeypatch):
    # Exactly the call the CLI makes: no exchange, clock or sleep injected.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    since = today - timedelta(days=30)
    router = BinanceRouter(now_ms=int(time.time() * 1000), listed_ms=int(since.timestamp() * 1000))
    routed = routed_binance_class(router)
    monkeypatch.setattr(
        routed, "throttle", lambda self, cost=None: None
    )  # no real sleeps in a unit test
    monkeypatch.setattr(ccxt, "binance", routed)
    out = tmp_path / "daily.parquet"

    summary = fetch_to_file(
        "binance", ["BTC/USDT"], "1d", since.date().isoformat(), out, until=None
    )

    assert routed.configs == [{"enableRateLimit": True}]
    assert summary["since"] == since.strftime("%Y-%m-%dT00:00:00Z")
    assert (
        29 <= summary["rows"] <= 30
    )  # the bar of today is still forming (30 unless midnight passes)
    assert load_panel(out).n_bars == summary["rows"]


@pytest.mark.parametrize("since", ["not-a-date", "2024-13-01", "", "01/02/2024"])
def test_unparseable_since_is_refused_naming_the_value(tmp_path, since):
    with pytest.raises(
        DataError, match=f"since must be an ISO date or datetime .*received {since!r}"
    ):
        fetch_to_file("binance", ["BTC/USDT"], "1h", since, tmp_path / "bars.parquet")


def test_unparseable_until_is_refused_naming_the_value(tmp_path):
    with pytest.raises(DataError, match="until must be an ISO date or datetime .*received 'soon'"):
        fetch_to_file(
            "binance", ["BTC/USDT"], "1h", "2024-01-01", tmp_path / "bars.parquet", until="soon"
        )


def test_until_before_since_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"until \(2023-12-31T00:00:00Z\) must be after since"):
        fetch_to_file(
            "binance",
            ["BTC/USDT"],
            "1h",
            "2024-01-01",
            tmp_path / "bars.parquet",
            until="2023-12-31",
        )


def test_unknown_output_type_is_refused_before_any_download(tmp_path, monkeypatch):
    monkeypatch.setattr(
        ccxt, "binance", None
    )  # any attempt to build the exchange would fail differently

    with pytest.raises(
        DataError, match=r"bars.xlsx: unknown output type; expected .*\.csv\.gz.*\.parquet"
    ):
        fetch_to_file("binance", ["BTC/USDT"], "1h", "2024-01-01", tmp_path / "bars.xlsx")


def test_nothing_to_write_is_an_error_and_writes_no_file(tmp_path, router):
    out = tmp_path / "bars.parquet"

    with pytest.raises(
        DataError, match=r"no closed 1h candles for BTC/USDT, ETH/BTC in 2024-02-01T00:00:00Z"
    ):
        fetch(router, out, since="2024-02-01")
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-01", T0),
        ("2024-01-01T05:00", T0 + 5 * HOUR),
        ("2024-01-01T05:00:00Z", T0 + 5 * HOUR),
        ("2024-01-01 07:00:00+02:00", T0 + 5 * HOUR),
        (datetime(2024, 1, 1, 5, tzinfo=UTC), T0 + 5 * HOUR),
    ],
)
def test_times_are_utc_unless_they_carry_an_offset(text, expected):
    assert parse_utc_ms(text, "since") == expected
