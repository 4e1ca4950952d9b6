"""Bad market-data files: each fault is read right or refused, and every dropped row is logged.

Expectations are worked out by hand from the rows each test writes (line 1 of a CSV is the
header, so data row i is line i + 2), not copied from the loader's output.
"""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import structlog
from structlog.testing import capture_logs

from engine.bus import MemoryBus
from engine.data import load_panel, synthetic_panel
from engine.data.ccxt_source import CcxtOhlcvSource
from engine.data.quality import REASONS, bar_problems, close_only_problems
from engine.errors import DataError
from engine.logging import configure_logging
from services.daemons.market_data import MarketDataService

HEADER = "timestamp,symbol,open,high,low,close,volume\n"
ISO_HOURS = ["2024-01-01T00:00:00Z", "2024-01-01T01:00:00Z", "2024-01-01T02:00:00Z"]
# The same three hours as epoch seconds, from the standard library rather than the loader.
EPOCH_SECONDS = [int(datetime(2024, 1, 1, hour, tzinfo=UTC).timestamp()) for hour in range(3)]


def bars(times: list[Any], symbols: list[str]) -> pd.DataFrame:
    """A valid long frame, every price distinct: close = 100 * (s + 1) + t + 1."""
    rows = []
    for t, stamp in enumerate(times):
        for s, symbol in enumerate(symbols):
            base = 100.0 * (s + 1) + t
            rows.append(
                {
                    "timestamp": stamp,
                    "symbol": symbol,
                    "open": base,
                    "high": base + 2,
                    "low": base - 2,
                    "close": base + 1,
                    "volume": 10.0 * (t + 1) + s,
                }
            )
    return pd.DataFrame(rows)


def write(tmp_path: Path, text: str, name: str = "bars.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# -- 1. epoch timestamps -------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["csv", "parquet"])
@pytest.mark.parametrize("scale", [1, 1000], ids=["epoch_seconds", "epoch_milliseconds"])
def test_epoch_timestamps_load_to_the_same_panel_as_iso_times(tmp_path, scale, suffix):
    iso = load_panel(write(tmp_path, bars(ISO_HOURS, ["A", "B"]).to_csv(index=False), "iso.csv"))
    frame = bars([s * scale for s in EPOCH_SECONDS], ["A", "B"])
    assert frame["timestamp"].dtype == np.int64
    path = tmp_path / f"epoch.{suffix}"
    if suffix == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    with capture_logs() as logs:
        panel = load_panel(path)
    assert logs == []  # no 1970 dates, so no rows collapse into "duplicates"
    np.testing.assert_array_equal(
        panel.bar_open,
        np.array(["2024-01-01T00:00", "2024-01-01T01:00", "2024-01-01T02:00"], "datetime64[ms]"),
    )
    assert panel.timeframe_label == "1h" and panel.symbols == iso.symbols
    for column in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(panel, column), getattr(iso, column))


def test_a_wide_files_numeric_date_column_is_read_as_epoch_seconds(tmp_path):
    days = [int(datetime(2024, 1, d, tzinfo=UTC).timestamp()) for d in (2, 3)]
    path = write(tmp_path, f"date,X\n{days[0]},1.5\n{days[1]},2.5\n")
    panel = load_panel(path)
    np.testing.assert_array_equal(
        panel.bar_open, np.array(["2024-01-02", "2024-01-03"], "datetime64[ms]")
    )
    np.testing.assert_array_equal(panel.close[:, 0], [1.5, 2.5])


@pytest.mark.parametrize(
    "value",
    [
        1_704_067_200_000_000,  # microseconds
        1_704_067_200_000_000_000,  # nanoseconds
        20_240_101,  # a YYYYMMDD date, not an epoch
        17_040_672_000,  # between the bands: seconds in 2510 or milliseconds in 1970
    ],
)
def test_epoch_numbers_of_no_known_unit_are_refused_naming_column_row_and_value(tmp_path, value):
    path = write(tmp_path, f"{HEADER}{EPOCH_SECONDS[0]},A,1,2,0.5,1,1\n{value},A,1,2,0.5,1,1\n")
    with pytest.raises(DataError) as caught:
        load_panel(path)
    assert str(caught.value).startswith(f"{path}: column 'timestamp' row 3 holds {value},")


def test_epoch_seconds_and_milliseconds_mixed_in_one_column_are_refused(tmp_path):
    ms = EPOCH_SECONDS[1] * 1000
    path = write(tmp_path, f"{HEADER}{EPOCH_SECONDS[0]},A,1,2,0.5,1,1\n{ms},A,1,2,0.5,1,1\n")
    with pytest.raises(DataError, match=re.escape(f"{path}: column 'timestamp' mixes epoch units")):
        load_panel(path)
    with pytest.raises(DataError, match=f"row 2 holds {EPOCH_SECONDS[0]} .* row 3 holds {ms}"):
        load_panel(path)


def test_bars_less_than_a_second_apart_are_a_data_error_not_a_traceback(tmp_path):
    times = ["2024-01-01T00:00:00.000Z", "2024-01-01T00:00:00.001Z", "2024-01-01T00:00:00.002Z"]
    path = write(tmp_path, bars(times, ["A"]).to_csv(index=False))
    with pytest.raises(DataError, match=re.escape(f"{path}: bars are most often 1 millisecond")):
        load_panel(path)


# -- 2. the bar's time survives the real logging set-up ------------------------------------------
@pytest.fixture
def json_log():
    stream = io.StringIO()
    configure_logging("backtest", level="info", format="json", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    structlog.reset_defaults()


def assert_stamped_now_with_bar_time(line: dict[str, Any], bar_time: str, before: datetime):
    assert line["bar_time"] == bar_time
    # The pipeline's own `timestamp` is when the line was written, not the bar.
    written = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert before <= written <= datetime.now(UTC)


def test_file_rejects_keep_their_bar_time_through_the_configured_pipeline(tmp_path, json_log):
    path = write(tmp_path, f"{HEADER}2024-01-01,A,1,2,0.5,1,1\n2024-01-02,A,1,2,0.5,-1,1\n")
    before = datetime.now(UTC)
    load_panel(path)
    [line] = [e for e in json_log() if e["event"] == "data.rejected"]
    assert_stamped_now_with_bar_time(line, "2024-01-02T00:00:00Z", before)
    assert (line["row"], line["symbol"], line["reason"]) == (3, "A", "non-positive close")


def test_market_data_rejects_keep_their_bar_time_through_the_configured_pipeline(json_log):
    panel = synthetic_panel(2, 3, start="2024-01-01")  # daily bars from 2024-01-01
    panel.volume[1, 0] = -5.0
    before = datetime.now(UTC)
    assert MarketDataService(MemoryBus(), panel, None, "none").bar_set(1) is not None
    [line] = [e for e in json_log() if e["event"] == "data.rejected"]
    assert_stamped_now_with_bar_time(line, "2024-01-02T00:00:00Z", before)


class _OnePageExchange:
    """Just enough of a ccxt exchange to serve one page of 1h candles."""

    id = "scripted"
    has = {"fetchOHLCV": True}
    timeframes = {"1h": "1h"}

    def __init__(self, page: list[list[Any]]) -> None:
        self.page = page

    def load_markets(self) -> dict[str, dict]:
        return {"BTC/USDT": {}}

    def fetch_ohlcv(self, symbol: str, timeframe: str, since: int, limit: Any) -> list:
        page, self.page = self.page, []
        return page


def test_ccxt_rejects_keep_their_bar_time_through_the_configured_pipeline(json_log):
    t0 = EPOCH_SECONDS[0] * 1000
    hour = 3_600_000
    candles = [[t0 + h * hour, 100.0, 101.0, 99.0, 100.0, 1.0] for h in range(3)]
    candles[1][4] = -1.0  # a negative close at 01:00
    source = CcxtOhlcvSource(
        "scripted",
        ["BTC/USDT"],
        "1h",
        exchange=_OnePageExchange(candles),
        clock=lambda: (t0 + 5 * hour) / 1000,
        sleep=lambda s: None,
    )
    before = datetime.now(UTC)
    source.history(t0)
    [line] = [e for e in json_log() if e["event"] == "data.rejected"]
    assert_stamped_now_with_bar_time(line, "2024-01-01T01:00:00Z", before)


# -- 3. dropped rows are each logged, with the real reason ---------------------------------------
@pytest.mark.parametrize(
    ("cell", "value", "reason"),
    [
        ("", None, "close is missing"),
        ("NaN", None, "close is missing"),
        ("inf", "inf", "close is not finite (inf)"),
        ("-inf", "-inf", "close is not finite (-inf)"),
    ],
)
def test_a_row_with_a_missing_or_infinite_close_is_logged_with_where_and_why(
    tmp_path, cell, value, reason
):
    path = write(
        tmp_path,
        HEADER
        + "2024-01-01,A,10,12,9,11,1\n"
        + "2024-01-01,B,20,22,19,21,1\n"
        + f"2024-01-02,B,20,22,19,{cell},1\n"
        + "2024-01-02,A,10,12,9,11,1\n",
    )
    with capture_logs() as logs:
        panel = load_panel(path)
    assert events(logs, "data.rejected") == [
        {
            "event": "data.rejected",
            "log_level": "warning",
            "source": str(path),
            "row": 4,
            "symbol": "B",
            "bar_time": "2024-01-02T00:00:00Z",
            "column": "close",
            "value": value,
            "reason": reason,
        }
    ]
    np.testing.assert_array_equal(panel.close, [[11.0, 21.0], [11.0, np.nan]])
    assert np.isnan(panel.open[1, 1]) and np.isnan(panel.volume[1, 1])


def test_an_infinite_high_is_named_as_such_not_as_high_below_close(tmp_path):
    path = write(tmp_path, f"{HEADER}2024-01-01,A,10,inf,9,11,1\n2024-01-02,A,10,12,9,11,1\n")
    with capture_logs() as logs:
        load_panel(path)
    assert [(e["column"], e["reason"]) for e in events(logs, "data.rejected")] == [
        ("high", "high is not finite (inf)")
    ]


def test_a_row_with_an_empty_symbol_is_logged_and_adds_no_symbol(tmp_path):
    path = write(
        tmp_path,
        HEADER + "2024-01-01,A,10,12,9,11,1\n2024-01-02,,10,12,9,11,1\n2024-01-03, ,1,2,0.5,1,1\n",
    )
    with capture_logs() as logs:
        panel = load_panel(path)
    assert [
        (e["row"], e["symbol"], e["bar_time"], e["column"], e["reason"])
        for e in events(logs, "data.rejected")
    ] == [
        (3, None, "2024-01-02T00:00:00Z", "symbol", "symbol is empty"),
        (4, None, "2024-01-03T00:00:00Z", "symbol", "symbol is empty"),
    ]
    assert panel.symbols == ("A",)
    np.testing.assert_array_equal(panel.close[:, 0], [11.0, np.nan, np.nan])  # times stay


def test_conflicting_duplicates_keep_the_last_row_and_say_which_rows_and_columns(tmp_path):
    path = write(
        tmp_path,
        HEADER
        + "2024-01-01,A,10,12,9,11,1\n"  # line 2: replaced by line 4
        + "2024-01-01,B,20,22,19,21,1\n"  # line 3: identical to line 5
        + "2024-01-01,A,10,13,9,12,1\n"  # line 4: differs in high and close
        + "2024-01-01,B,20,22,19,21,1\n"
        + "2024-01-02,A,10,12,9,11,1\n",
    )
    with capture_logs() as logs:
        panel = load_panel(path)
    assert panel.close[0].tolist() == [12.0, 21.0] and panel.high[0].tolist() == [13.0, 22.0]
    assert events(logs, "data.duplicate_conflict") == [
        {
            "event": "data.duplicate_conflict",
            "log_level": "warning",
            "source": str(path),
            "symbol": "A",
            "bar_time": "2024-01-01T00:00:00Z",
            "columns": ["high", "close"],
            "kept": {"row": 4, "high": 13.0, "close": 12.0},
            "dropped": [{"row": 2, "high": 12.0, "close": 11.0}],
        }
    ]
    assert [e["rows"] for e in events(logs, "data.duplicates_dropped")] == [2]


def test_identical_duplicates_are_one_summary_line_and_no_conflict(tmp_path):
    row = "2024-01-01,A,10,12,9,11,1\n"
    with capture_logs() as logs:
        load_panel(write(tmp_path, HEADER + row * 3 + "2024-01-02,A,10,12,9,11,1\n"))
    assert [e["event"] for e in logs] == ["data.duplicates_dropped"]
    assert logs[0]["rows"] == 2


def test_a_rejected_copy_does_not_displace_a_good_row_for_the_same_bar(tmp_path):
    path = write(tmp_path, f"{HEADER}2024-01-01,A,10,12,9,11,1\n2024-01-01,A,10,12,9,,1\n")
    with capture_logs() as logs:
        panel = load_panel(path)
    assert panel.close.tolist() == [[11.0]]
    assert [(e["event"], e.get("row")) for e in logs] == [("data.rejected", 3)]


def test_every_row_is_a_bar_a_logged_reject_or_a_counted_duplicate(tmp_path):
    frame = bars([f"2024-01-{d:02d}" for d in range(1, 11)], ["A", "B", "C"])  # 30 rows
    frame.loc[3, "close"] = np.nan
    frame.loc[7, "symbol"] = ""
    frame.loc[12, "close"] = np.inf
    frame.loc[20, "low"] = frame.loc[20, "high"] + 1
    repeats = frame.iloc[[0, 1, 5]].assign(close=frame["close"].iloc[[0, 1, 5]] + 0.5)
    path = write(tmp_path, pd.concat([frame, repeats]).to_csv(index=False))
    with capture_logs() as logs:
        panel = load_panel(path)
    rejected = events(logs, "data.rejected")
    assert sorted(e["row"] for e in rejected) == [5, 9, 14, 22]
    [duplicates] = events(logs, "data.duplicates_dropped")
    assert len(events(logs, "data.duplicate_conflict")) == 3
    bars_kept = int(np.isfinite(panel.close).sum())
    assert bars_kept == 30 - 4  # the three repeats replaced their originals
    assert bars_kept + len(rejected) + duplicates["rows"] == 33


def test_a_file_whose_rows_are_all_rejected_is_a_data_error(tmp_path):
    path = write(tmp_path, f"{HEADER}2024-01-01,A,1,2,0.5,,1\n2024-01-02,A,1,2,0.5,-1,1\n")
    with pytest.raises(DataError, match=re.escape(f"{path}: no usable rows; all 2 were rejected")):
        load_panel(path)


def test_a_wide_files_infinite_close_is_logged_naming_row_column_and_value(tmp_path):
    path = write(tmp_path, "date,X,Y\n2024-01-02,1.0,2.0\n2024-01-01,inf,3.0\n")
    with capture_logs() as logs:
        panel = load_panel(path)
    [event] = events(logs, "data.rejected")
    assert (event["row"], event["column"], event["bar_time"], event["reason"]) == (
        3,
        "X",
        "2024-01-01T00:00:00Z",
        "close is not finite (inf)",
    )
    np.testing.assert_array_equal(panel.close, [[np.nan, 3.0], [1.0, 2.0]])


def test_close_only_problems_fail_the_same_bars_as_bar_problems_but_name_the_close():
    close = np.array([5.0, np.nan, 0.0, -2.0, np.inf, -np.inf])
    same = bar_problems(close, close, close, close, None)
    named = close_only_problems(close)
    np.testing.assert_array_equal(named >= 0, same >= 0)
    assert [REASONS[p] if p >= 0 else None for p in named] == [
        None,
        None,
        "non-positive close",
        "non-positive close",
        "close is not finite",
        "close is not finite",
    ]


# -- 4. the shape of the file and where a bad cell is --------------------------------------------
def test_a_long_file_without_close_says_close_is_missing_not_a_wide_format_error(tmp_path):
    path = write(tmp_path, "timestamp,symbol,open,high,low\n2024-01-01,A,1,2,0.5\n")
    with pytest.raises(DataError) as caught:
        load_panel(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: read as long format (it has a symbol column)")
    assert message.endswith(
        "needs columns timestamp, symbol, open, high, low, close; missing: close"
    )


def test_an_ohlc_file_without_a_symbol_column_says_symbol_is_missing(tmp_path):
    path = write(tmp_path, "timestamp,open,high,low,close\n2024-01-01,1,2,0.5,1\n")
    with pytest.raises(DataError, match=re.escape("; missing: symbol")):
        load_panel(path)


def test_a_directory_given_as_data_is_named_a_directory(tmp_path):
    folder = tmp_path / "data.csv"
    folder.mkdir()
    with pytest.raises(DataError, match=re.escape(f"{folder}: is a directory")):
        load_panel(folder)


def test_a_wide_files_text_cell_names_file_line_date_column_and_value(tmp_path):
    # Rows out of date order: the row named is the file's line, not a position after sorting.
    path = write(tmp_path, "date,X,Y\n2024-01-03,1.0,2.0\n2024-01-01,1.1,halted\n")
    expected = f"{path}: column 'Y' row 3 (dated 2024-01-01T00:00:00Z) is not a number: 'halted'"
    with pytest.raises(DataError, match=re.escape(expected)):
        load_panel(path)
