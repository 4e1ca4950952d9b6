"""ccxt OHLCV source: paging, closed-candle rule, hygiene, retries and error translation.

Most tests drive ccxt's real ``binance`` class against an offline router (recorded
exchangeInfo, generated klines), so ccxt's own parsing, ``since`` filtering and error mapping
run as they do online. A few use a scripted exchange to reach behaviour the real class hides
(ccxt sorts each page itself) or an exchange that misbehaves.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import ccxt
import numpy as np
import pandas as pd
import pytest
from structlog.testing import capture_logs

from engine.data.ccxt_source import Candle, CcxtOhlcvSource
from engine.errors import DataError
from tests.fixtures.ccxt_router import (
    CORRUPTION_KINDS,
    BinanceRouter,
    offline_binance,
    routed_binance_class,
)

HOUR = 3_600_000
# Binance errors.md, -1008 SERVER_BUSY (not among the recorded bodies).
SERVER_BUSY = (
    503,
    {
        "code": -1008,
        "msg": "Server is currently overloaded with other requests. "
        "Please try again in a few minutes.",
    },
)
T0 = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)
NOW = T0 + 250 * HOUR + 30 * 60_000  # bar 250 is forming; bars 0..249 are closed


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


@pytest.fixture
def router() -> BinanceRouter:
    return BinanceRouter(now_ms=NOW, listed_ms=T0)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_source(router: BinanceRouter, sleeps: list[float]):
    def make(
        symbols: tuple[str, ...] = ("BTC/USDT",), timeframe: str = "1h", **options: Any
    ) -> CcxtOhlcvSource:
        options.setdefault("exchange", offline_binance(router))
        options.setdefault("clock", lambda: router.now_ms / 1000)
        return CcxtOhlcvSource(
            "binance", symbols, timeframe, sleep=sleeps.append, jitter=lambda: 0.5, **options
        )

    return make


# -- paging ------------------------------------------------------------------------------


def test_history_pages_forward_from_the_candle_after_the_last_one_received(router, make_source):
    source = make_source(page_limit=100)

    rows = source.history(T0)

    assert [r["startTime"] for r in router.klines_requests] == [
        str(T0),
        str(T0 + 99 * HOUR + 1),
        str(T0 + 199 * HOUR + 1),
    ]
    assert {(r["symbol"], r["interval"], r["limit"]) for r in router.klines_requests} == {
        ("BTCUSDT", "1h", "100")
    }
    assert rows["BTC/USDT"] == router.candles("BTCUSDT", "1h")
    assert len(rows["BTC/USDT"]) == 250 and rows["BTC/USDT"][-1].timestamp == T0 + 249 * HOUR
    assert source.counts.requests == 3 and source.counts.candles == 250


def test_history_stops_at_until_and_leaves_it_out(router, make_source):
    rows = make_source(page_limit=100).history(T0, T0 + 150 * HOUR)

    assert [r["startTime"] for r in router.klines_requests] == [str(T0), str(T0 + 99 * HOUR + 1)]
    assert rows["BTC/USDT"] == router.candles("BTCUSDT", "1h")[:150]


def test_history_pages_every_symbol_of_the_universe(router, make_source):
    rows = make_source(("BTC/USDT", "ETH/BTC"), page_limit=200).history(T0 + 10 * HOUR)

    assert list(rows) == ["BTC/USDT", "ETH/BTC"]
    assert [r["symbol"] for r in router.klines_requests] == [
        "BTCUSDT",
        "BTCUSDT",
        "ETHBTC",
        "ETHBTC",
    ]
    for symbol, market_id in (("BTC/USDT", "BTCUSDT"), ("ETH/BTC", "ETHBTC")):
        assert rows[symbol] == router.candles(market_id, "1h")[10:]


def test_history_before_the_listing_starts_at_the_first_bar_without_a_gap(router, make_source):
    with capture_logs() as logs:
        rows = make_source().history(T0 - 1000 * HOUR)

    assert rows["BTC/USDT"] == router.candles("BTCUSDT", "1h")
    assert events(logs, "data.gap") == []


def test_history_since_the_present_is_empty(router, make_source):
    assert make_source().history(NOW + HOUR) == {"BTC/USDT": []}
    assert router.klines_requests == []


# -- closed candles only -----------------------------------------------------------------


@pytest.mark.parametrize(
    "now",
    [T0 + 250 * HOUR, T0 + 250 * HOUR + 1, T0 + 251 * HOUR - 1],
    ids=["at-the-close-of-249", "just-after", "just-before-the-close-of-250"],
)
def test_only_closed_candles_are_returned(now, make_source):
    router = BinanceRouter(now_ms=now, listed_ms=T0)
    source = make_source(exchange=offline_binance(router), clock=lambda: now / 1000)

    rows = source.history(T0)

    served = router.candles("BTCUSDT", "1h", closed_only=False)
    assert served[-1][0] == T0 + 250 * HOUR  # Binance serves the bar still forming...
    assert rows["BTC/USDT"][-1].timestamp == T0 + 249 * HOUR  # ...and it is not published
    assert source.counts.unclosed == 1
    assert (
        len(router.klines_requests) == 1
    )  # the forming bar ends the paging: nothing later is closed


# -- hygiene -----------------------------------------------------------------------------


def test_duplicate_open_times_keep_the_last_copy(router, make_source):
    router.duplicate("BTCUSDT", T0 + 20 * HOUR, T0 + 21 * HOUR)
    source = make_source()

    with capture_logs() as logs:
        rows = source.history(T0)

    expected = router.candles("BTCUSDT", "1h")
    got = {c.timestamp: c for c in rows["BTC/USDT"]}
    assert len(rows["BTC/USDT"]) == len(expected) == len(got)
    assert got[T0 + 20 * HOUR].volume == pytest.approx(1.5 * expected[20][5], rel=1e-7)
    assert [(e["symbol"], e["count"]) for e in events(logs, "data.duplicates_dropped")] == [
        ("BTC/USDT", 2)
    ]
    assert source.counts.duplicates == 2


def test_out_of_order_rows_within_pages_come_out_sorted(router, make_source):
    router.shuffle_pages = True

    rows = make_source(page_limit=60).history(T0)

    assert rows["BTC/USDT"] == router.candles("BTCUSDT", "1h")


def test_gap_is_logged_with_its_span_and_missing_bar_count(router, make_source):
    router.drop("BTCUSDT", T0 + 10 * HOUR, T0 + 11 * HOUR)
    source = make_source()

    with capture_logs() as logs:
        rows = source.history(T0)

    assert [e for e in events(logs, "data.gap")] == [
        {
            "event": "data.gap",
            "log_level": "warning",
            "exchange": "binance",
            "symbol": "BTC/USDT",
            "timeframe": "1h",
            "from": "2024-01-01T10:00:00Z",
            "to": "2024-01-01T12:00:00Z",
            "missing": 2,
        }
    ]
    assert T0 + 10 * HOUR not in {c.timestamp for c in rows["BTC/USDT"]}
    assert (source.counts.gaps, source.counts.missing_bars) == (1, 2)


def test_gap_across_a_page_boundary_does_not_stop_the_paging(router, make_source):
    router.drop("BTCUSDT", *(T0 + h * HOUR for h in range(95, 130)))

    with capture_logs() as logs:
        rows = make_source(page_limit=100).history(T0)

    expected = [
        c for c in router.candles("BTCUSDT", "1h") if not T0 + 95 * HOUR <= c[0] < T0 + 130 * HOUR
    ]
    assert rows["BTC/USDT"] == expected
    assert [r["startTime"] for r in router.klines_requests][1] == str(T0 + 134 * HOUR + 1)
    assert [(e["from"], e["to"], e["missing"]) for e in events(logs, "data.gap")] == [
        ("2024-01-04T23:00:00Z", "2024-01-06T10:00:00Z", 35)
    ]


REASONS = {
    "nan_close": "close is missing or not finite",
    "negative_open": "open is not positive",
    "zero_close": "close is not positive",
    "high_below_low": "is below low",
    "high_below_open": "is below max(open, close)",
    "low_above_close": "is above min(open, close)",
    "negative_volume": "volume is negative",
}


@pytest.mark.parametrize("kind", CORRUPTION_KINDS)
def test_bad_candle_is_rejected_with_its_reason(kind, router, make_source):
    router.corrupt("BTCUSDT", T0 + 30 * HOUR, kind)
    source = make_source()

    with capture_logs() as logs:
        rows = source.history(T0)

    [rejected] = events(logs, "data.rejected")
    assert (rejected["symbol"], rejected["bar_time"]) == ("BTC/USDT", "2024-01-02T06:00:00Z")
    assert REASONS[kind] in rejected["reason"]
    assert source.counts.rejected == 1
    assert T0 + 30 * HOUR not in {c.timestamp for c in rows["BTC/USDT"]}
    assert len(rows["BTC/USDT"]) == 249
    # A rejected candle leaves a hole, and the hole is reported like any other.
    assert [(e["from"], e["missing"]) for e in events(logs, "data.gap")] == [
        ("2024-01-02T06:00:00Z", 1)
    ]


# -- retries and errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "ccxt_error"),
    [
        ("connection", "NetworkError"),
        ("timeout", "RequestTimeout"),
        ("-1003", "DDoSProtection"),  # HTTP 429 with Binance's TOO_MANY_REQUESTS body
        (503, "ExchangeNotAvailable"),
        (SERVER_BUSY, "OperationFailed"),  # not a NetworkError, yet "try again in a few minutes"
    ],
)
def test_transient_failures_are_retried_with_backoff_then_succeed(
    failure, ccxt_error, router, make_source, sleeps
):
    source = make_source(page_limit=100)
    router.fail(3, failure)

    with capture_logs() as logs:
        rows = source.history(T0)

    assert rows["BTC/USDT"] == router.candles("BTCUSDT", "1h")
    assert sleeps == [0.75, 1.5, 3.0]  # base 1 s doubling, jitter factor 0.75
    retries = events(logs, "data.fetch_retry")
    assert [(e["symbol"], e["attempt"], e["delay"]) for e in retries] == [
        ("BTC/USDT", 1, 0.75),
        ("BTC/USDT", 2, 1.5),
        ("BTC/USDT", 3, 3.0),
    ]
    assert all(
        e["error"].startswith(ccxt_error + ":") and e["log_level"] == "warning" for e in retries
    )
    # The failed request is repeated as it was, then paging carries on.
    assert [r["startTime"] for r in router.klines_requests] == [str(T0)] * 4 + [
        str(T0 + 99 * HOUR + 1),
        str(T0 + 199 * HOUR + 1),
    ]
    assert source.counts.retries == 3


def test_backoff_grows_exponentially_up_to_its_cap(router, make_source, sleeps):
    router.fail(6, "connection")

    make_source(max_retries=6, backoff_cap_s=8.0).history(T0)

    assert sleeps == [0.75, 1.5, 3.0, 6.0, 6.0, 6.0]


def test_retries_exhausted_raise_data_error_naming_symbol_and_error(router, make_source, sleeps):
    router.fail(3, "connection")

    with pytest.raises(
        DataError, match=r"binance fetch_ohlcv BTC/USDT 1h: gave up after 2 retries: NetworkError"
    ):
        make_source(max_retries=2).history(T0)
    assert len(sleeps) == 2 and len(router.klines_requests) == 3


def test_bad_symbol_from_the_exchange_is_not_retried(router, make_source, sleeps):
    router.fail(1, "-1121")

    with pytest.raises(DataError, match=r"BTC/USDT 1h: BadSymbol: binance .*Invalid symbol"):
        make_source().history(T0)
    assert sleeps == [] and len(router.klines_requests) == 1


def test_load_markets_is_retried_on_network_errors(router, make_source, sleeps):
    router.fail(2, "timeout", path="/api/v3/exchangeInfo")

    with capture_logs() as logs:
        source = make_source()

    assert sleeps == [0.75, 1.5]
    assert [e["action"] for e in events(logs, "data.fetch_retry")] == [
        "load_markets",
        "load_markets",
    ]
    assert source.history(T0)["BTC/USDT"] == router.candles("BTCUSDT", "1h")


def test_unknown_symbol_is_refused_naming_it(make_source):
    with pytest.raises(DataError, match=r"no market 'BTC/USD'; did you mean BTC/USDT"):
        make_source(("BTC/USDT", "BTC/USD"))


def test_unknown_timeframe_is_refused_listing_the_valid_ones(make_source):
    with pytest.raises(DataError, match=r"timeframe '7h'; valid timeframes: 1s, 1m, .*1h, 2h, 4h"):
        make_source(timeframe="7h")


def test_unknown_exchange_id_is_refused_pointing_at_ccxt_exchanges():
    with pytest.raises(
        DataError,
        match=r"'binanse' is not a ccxt exchange id; ccxt.exchanges .*did you mean binance",
    ):
        CcxtOhlcvSource("binanse", ["BTC/USDT"], "1h")


def test_ccxt_attributes_that_are_not_exchanges_are_refused():
    with pytest.raises(DataError, match=r"'Exchange' is not a ccxt exchange id"):
        CcxtOhlcvSource("Exchange", ["BTC/USDT"], "1h")


def test_exchange_without_ohlcv_is_refused(router):
    exchange = offline_binance(router)
    exchange.has = {**exchange.has, "fetchOHLCV": False}

    with pytest.raises(DataError, match=r"'binance' does not offer OHLCV"):
        CcxtOhlcvSource("binance", ["BTC/USDT"], "1h", exchange=exchange)
    assert router.requests == []


def test_production_constructor_enables_the_rate_limit_and_ccxt_throttles_every_request(
    router, monkeypatch
):
    routed = routed_binance_class(router)
    throttled: list[float] = []
    monkeypatch.setattr(routed, "throttle", lambda self, cost=None: throttled.append(cost))
    monkeypatch.setattr(ccxt, "binance", routed)

    source = CcxtOhlcvSource(
        "binance", ["BTC/USDT"], "1h", page_limit=100, clock=lambda: NOW / 1000
    )
    source.history(T0)

    assert routed.configs == [{"enableRateLimit": True}]
    assert source.exchange.enableRateLimit is True and source.exchange.rateLimit > 0
    assert (
        len(throttled) == len(router.requests) == 4
    )  # exchangeInfo + 3 klines pages, each throttled


# -- live polling ------------------------------------------------------------------------


def test_poll_closed_returns_each_closed_candle_once(router, make_source):
    clock = {"now": NOW}
    source = make_source(clock=lambda: clock["now"] / 1000)

    first = source.poll_closed(T0 + 240 * HOUR)
    clock["now"] = router.now_ms = NOW + 2 * HOUR
    second = source.poll_closed(T0 + 240 * HOUR)
    third = source.poll_closed(T0 + 240 * HOUR)

    assert [c.timestamp for c in first["BTC/USDT"]] == [T0 + h * HOUR for h in range(240, 250)]
    assert [c.timestamp for c in second["BTC/USDT"]] == [T0 + 250 * HOUR, T0 + 251 * HOUR]
    assert third == {"BTC/USDT": []}
    assert [r["startTime"] for r in router.klines_requests] == [
        str(T0 + 240 * HOUR),
        str(T0 + 249 * HOUR + 1),
        str(T0 + 251 * HOUR + 1),
    ]


def test_poll_closed_reports_a_gap_between_polls(router, make_source):
    clock = {"now": NOW}
    source = make_source(clock=lambda: clock["now"] / 1000)
    source.poll_closed(T0 + 240 * HOUR)
    router.drop("BTCUSDT", T0 + 250 * HOUR)
    clock["now"] = router.now_ms = NOW + 2 * HOUR

    with capture_logs() as logs:
        fresh = source.poll_closed(T0 + 240 * HOUR)

    assert [c.timestamp for c in fresh["BTC/USDT"]] == [T0 + 251 * HOUR]
    assert [(e["from"], e["to"], e["missing"]) for e in events(logs, "data.gap")] == [
        ("2024-01-11T10:00:00Z", "2024-01-11T11:00:00Z", 1)
    ]


# -- shapes ------------------------------------------------------------------------------


def test_to_panel_aligns_symbols_on_the_union_of_times(router, make_source):
    router.drop("ETHBTC", T0 + 5 * HOUR)
    source = make_source(("BTC/USDT", "ETH/BTC"))
    rows = source.history(T0, T0 + 10 * HOUR)

    panel = source.to_panel(rows)

    assert panel.symbols == ("BTC/USDT", "ETH/BTC")
    assert panel.bar_open.dtype == np.dtype("datetime64[ms]")
    assert panel.bar_open[0] == np.datetime64("2024-01-01T00:00", "ms") and panel.n_bars == 10
    assert panel.timeframe == np.timedelta64(HOUR, "ms") and panel.timeframe_label == "1h"
    assert np.isnan(panel.close[5, 1]) and not np.isnan(panel.close[5, 0])
    btc = router.candles("BTCUSDT", "1h")[:10]
    np.testing.assert_array_equal(panel.open[:, 0], [c[1] for c in btc])
    np.testing.assert_array_equal(panel.volume[:, 0], [c[5] for c in btc])


def test_to_frame_is_the_long_file_format(make_source):
    source = make_source(("BTC/USDT", "ETH/BTC"))
    frame = source.to_frame(source.history(T0, T0 + 3 * HOUR))

    assert list(frame.columns) == ["timestamp", "symbol", "open", "high", "low", "close", "volume"]
    assert str(frame["timestamp"].dt.tz) == "UTC"
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2024-01-01", tz="UTC")
    assert list(frame["symbol"]) == ["BTC/USDT", "ETH/BTC"] * 3


# -- behaviour behind the real class: a scripted exchange --------------------------------


class ScriptedExchange:
    """Just enough of a ccxt Exchange to serve scripted pages, whatever ``since`` asks for."""

    id = "scripted"
    has = {"fetchOHLCV": True}
    timeframes = {"1h": "1h", "1M": "1M"}

    def __init__(self, *pages: list[list[Any]]) -> None:
        self.pages = list(pages)
        self.calls: list[int] = []

    def load_markets(self) -> dict[str, dict]:
        return {"BTC/USDT": {}}

    def fetch_ohlcv(
        self, symbol: str, timeframe: str, since: int, limit: int | None
    ) -> list[list[Any]]:
        self.calls.append(since)
        return self.pages.pop(0) if self.pages else []


def bar(hour: int, close: float = 100.0, volume: float = 1.0) -> list[Any]:
    return [T0 + hour * HOUR, close, close + 1, close - 1, close, volume]


def scripted_source(
    exchange: ScriptedExchange, timeframe: str = "1h", now: int = NOW
) -> CcxtOhlcvSource:
    return CcxtOhlcvSource(
        "scripted",
        ["BTC/USDT"],
        timeframe,
        exchange=exchange,
        clock=lambda: now / 1000,
        sleep=lambda s: None,
    )


def test_rows_out_of_order_across_pages_are_sorted_and_duplicates_keep_the_last():
    # ccxt sorts each page it parses, so disorder and repeats across pages are ours to handle.
    exchange = ScriptedExchange([bar(3), bar(1), bar(2, volume=1.0)], [bar(2, volume=7.0), bar(4)])

    with capture_logs() as logs:
        rows = scripted_source(exchange).history(T0)

    assert [c.timestamp for c in rows["BTC/USDT"]] == [T0 + h * HOUR for h in (1, 2, 3, 4)]
    assert rows["BTC/USDT"][1].volume == 7.0
    assert [e["count"] for e in events(logs, "data.reordered")] == [3]  # 1, 2 and 2 came after 3
    assert [e["count"] for e in events(logs, "data.duplicates_dropped")] == [1]
    assert exchange.calls == [T0, T0 + 3 * HOUR + 1, T0 + 4 * HOUR + 1]


def test_a_page_that_does_not_move_forward_ends_the_paging():
    exchange = ScriptedExchange(*([[bar(0), bar(1)]] * 50))  # an exchange that ignores `since`

    with capture_logs() as logs:
        rows = scripted_source(exchange).history(T0)

    assert exchange.calls == [T0, T0 + HOUR + 1]
    assert [c.timestamp for c in rows["BTC/USDT"]] == [T0, T0 + HOUR]
    assert len(events(logs, "data.page_stalled")) == 1


def test_missing_values_from_the_exchange_are_rejected():
    exchange = ScriptedExchange([bar(0), [T0 + HOUR, 100.0, None, 99.0, 100.0, 1.0], bar(2)])

    with capture_logs() as logs:
        rows = scripted_source(exchange).history(T0)

    assert [c.timestamp for c in rows["BTC/USDT"]] == [T0, T0 + 2 * HOUR]
    assert "high is missing" in events(logs, "data.rejected")[0]["reason"]


def test_monthly_candles_close_at_the_calendar_month_end():
    # ccxt's parse_timeframe counts a month as 30 days; January has 31.
    january, february = (int(datetime(2024, m, 1, tzinfo=UTC).timestamp() * 1000) for m in (1, 2))
    candles = [[january, 1.0, 2.0, 0.5, 1.5, 10.0], [february, 1.5, 2.0, 1.0, 1.2, 10.0]]
    on_january_31 = int(datetime(2024, 1, 31, 12, tzinfo=UTC).timestamp() * 1000)
    on_march_1 = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp() * 1000)

    early = scripted_source(ScriptedExchange(candles[:1]), "1M", now=on_january_31).history(january)
    later = scripted_source(ScriptedExchange(candles), "1M", now=on_march_1).history(january)

    assert early == {"BTC/USDT": []}
    assert later["BTC/USDT"] == [Candle(*candles[0]), Candle(*candles[1])]


def test_monthly_gap_counts_calendar_months():
    months = [int(datetime(2024, m, 1, tzinfo=UTC).timestamp() * 1000) for m in (1, 4)]
    exchange = ScriptedExchange([[t, 1.0, 2.0, 0.5, 1.5, 10.0] for t in months])
    now = int(datetime(2024, 6, 1, tzinfo=UTC).timestamp() * 1000)

    with capture_logs() as logs:
        scripted_source(exchange, "1M", now=now).history(months[0])

    assert [(e["from"], e["to"], e["missing"]) for e in events(logs, "data.gap")] == [
        ("2024-02-01T00:00:00Z", "2024-04-01T00:00:00Z", 2)
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"page_limit": 0}, "page_limit must be a positive"),
        ({"max_retries": -1}, "max_retries must be >= 0"),
    ],
)
def test_bad_options_are_refused_naming_them(options, message):
    with pytest.raises(DataError, match=message):
        CcxtOhlcvSource("scripted", ["BTC/USDT"], "1h", exchange=ScriptedExchange(), **options)


def test_symbols_given_as_one_string_are_refused():
    with pytest.raises(DataError, match="sequence of ccxt symbols"):
        CcxtOhlcvSource("scripted", "BTC/USDT", "1h", exchange=ScriptedExchange())
