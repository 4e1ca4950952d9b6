"""Market-data files load into panels; bad files fail naming the file, the column and the row."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from structlog.testing import capture_logs

from engine.data import load_panel
from engine.errors import DataError

# Slices of real files, committed with the tests (tests/fixtures/README.md says what and whence).
FIXTURE_DATA = Path(__file__).resolve().parents[3] / "fixtures" / "data"
CRYPTO_5M = FIXTURE_DATA / "freqtrade_binance_btc_5m_2018-01-14_17.csv.gz"
STOCKS_DAILY = FIXTURE_DATA / "stock_prices_2012-2013.csv.gz"


def long_frame(times: list[str], symbols: list[str], *, volume: bool = True) -> pd.DataFrame:
    """A valid long OHLCV frame: one row per (time, symbol), every price distinct."""
    rows = []
    for t, stamp in enumerate(times):
        for s, symbol in enumerate(symbols):
            base = 100.0 * (s + 1) + t
            row = {
                "timestamp": stamp,
                "symbol": symbol,
                "open": base,
                "high": base + 2,
                "low": base - 2,
                "close": base + 1,
            }
            if volume:
                row["volume"] = 10.0 * (t + 1) + s
            rows.append(row)
    return pd.DataFrame(rows)


def write_csv(tmp_path: Path, frame: pd.DataFrame, name: str = "bars.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def ms(stamp: str) -> np.datetime64:
    return np.datetime64(stamp, "ms")


def rejected(logs: list[dict]) -> list[dict]:
    return [entry for entry in logs if entry["event"] == "data.rejected"]


# -- long format ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bars.csv", "bars.csv.gz", "bars.parquet"])
def test_long_file_loads_bar_open_times_symbols_and_prices(tmp_path, name):
    frame = long_frame(
        ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z"],
        ["ETH/USDT", "BTC/USDT"],
    )
    path = tmp_path / name
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    panel = load_panel(path)
    np.testing.assert_array_equal(
        panel.bar_open, [ms("2024-01-01"), ms("2024-01-02"), ms("2024-01-03")]
    )
    assert panel.bar_open.dtype == np.dtype("datetime64[ms]")
    assert panel.symbols == ("BTC/USDT", "ETH/USDT")  # sorted, whatever the file order
    for column in ("open", "high", "low", "close", "volume"):
        expected = frame.pivot(index="timestamp", columns="symbol", values=column)
        np.testing.assert_array_equal(
            getattr(panel, column), expected[["BTC/USDT", "ETH/USDT"]].to_numpy()
        )
    assert panel.timeframe_label == "1d"
    assert panel.source == str(path)


def test_long_file_rows_out_of_order_are_sorted_by_time(tmp_path):
    frame = long_frame(["2024-01-03", "2024-01-01", "2024-01-02"], ["A"])
    panel = load_panel(write_csv(tmp_path, frame))
    np.testing.assert_array_equal(
        panel.bar_open, [ms("2024-01-01"), ms("2024-01-02"), ms("2024-01-03")]
    )
    np.testing.assert_array_equal(panel.close[:, 0], [102.0, 103.0, 101.0])


def test_long_file_timestamps_with_offsets_are_converted_to_utc(tmp_path):
    frame = long_frame(["2024-01-01T02:00:00+02:00", "2024-01-02T02:00:00+02:00"], ["A"])
    panel = load_panel(write_csv(tmp_path, frame))
    np.testing.assert_array_equal(panel.bar_open, [ms("2024-01-01"), ms("2024-01-02")])


def test_a_symbol_without_a_bar_at_a_time_is_nan_there(tmp_path):
    frame = long_frame(["2024-01-01", "2024-01-02", "2024-01-03"], ["A", "B"])
    frame = frame[~((frame["symbol"] == "B") & (frame["timestamp"] == "2024-01-02"))]
    panel = load_panel(write_csv(tmp_path, frame))
    for column in ("open", "high", "low", "close", "volume"):
        values = getattr(panel, column)
        assert np.isnan(values[1, 1])
        assert not np.isnan(np.delete(values.ravel(), 3)).any()


def test_long_file_without_volume_has_volume_none(tmp_path):
    panel = load_panel(
        write_csv(tmp_path, long_frame(["2024-01-01", "2024-01-02"], ["A"], volume=False))
    )
    assert panel.volume is None


def test_long_file_column_names_are_case_insensitive(tmp_path):
    frame = long_frame(["2024-01-01", "2024-01-02"], ["A"]).rename(columns=str.upper)
    panel = load_panel(write_csv(tmp_path, frame))
    np.testing.assert_array_equal(panel.close[:, 0], [101.0, 102.0])


def test_five_minute_bars_infer_a_5m_timeframe(tmp_path):
    times = [f"2024-01-06T00:{m:02d}:00Z" for m in range(0, 60, 5)]
    panel = load_panel(write_csv(tmp_path, long_frame(times, ["A"])))
    assert panel.timeframe == np.timedelta64(5, "m")
    assert panel.timeframe_label == "5m"
    np.testing.assert_array_equal(
        panel.close_time - panel.bar_open, np.full(12, np.timedelta64(300_000, "ms"))
    )


def test_timeframe_is_the_most_common_step_despite_gaps(tmp_path):
    times = [
        "2024-01-01T00:00Z",
        "2024-01-01T01:00Z",
        "2024-01-01T02:00Z",
        "2024-01-01T05:00Z",
        "2024-01-01T06:00Z",
    ]
    assert load_panel(write_csv(tmp_path, long_frame(times, ["A"]))).timeframe_label == "1h"


def test_weekday_only_daily_data_has_252_periods_per_year(tmp_path):
    days = pd.bdate_range("2024-01-01", "2024-03-29").strftime("%Y-%m-%d").tolist()
    panel = load_panel(write_csv(tmp_path, long_frame(days, ["A"])))
    assert panel.timeframe_label == "1d"
    assert panel.periods_per_year() == 252.0


def test_daily_data_with_weekends_has_365_periods_per_year(tmp_path):
    days = pd.date_range("2024-01-01", "2024-03-31").strftime("%Y-%m-%d").tolist()
    panel = load_panel(write_csv(tmp_path, long_frame(days, ["A"])))
    assert panel.periods_per_year() == 365.0


def test_weekly_data_has_calendar_weeks_per_year_not_trading_days(tmp_path):
    weeks = pd.date_range("2020-01-06", periods=60, freq="7D").strftime("%Y-%m-%d").tolist()
    panel = load_panel(write_csv(tmp_path, long_frame(weeks, ["A"])))
    assert panel.periods_per_year() == pytest.approx(365.25 / 7)


def test_intraday_data_scales_periods_per_year_by_bars_per_day(tmp_path):
    times = [f"2024-01-06T00:{m:02d}:00Z" for m in range(0, 60, 5)]
    panel = load_panel(write_csv(tmp_path, long_frame(times, ["A"])))
    assert panel.periods_per_year() == 365.0 * 288


# -- wide close-only format ----------------------------------------------------------------------
def test_wide_close_only_csv_loads_each_column_as_a_symbol(tmp_path):
    frame = pd.DataFrame(
        {
            "date": ["2024-01-02", "2024-01-03", "2024-01-04"],
            "MSFT": [370.0, 371.5, 368.25],
            "AAPL": [185.0, None, 181.9],
        }
    )
    with capture_logs() as logs:
        panel = load_panel(write_csv(tmp_path, frame, "prices.csv"))
    assert panel.symbols == ("MSFT", "AAPL")  # file order
    np.testing.assert_array_equal(
        panel.bar_open, [ms("2024-01-02"), ms("2024-01-03"), ms("2024-01-04")]
    )
    np.testing.assert_array_equal(panel.close, [[370.0, 185.0], [371.5, np.nan], [368.25, 181.9]])
    for column in ("open", "high", "low"):
        np.testing.assert_array_equal(getattr(panel, column), panel.close)
    assert panel.volume is None
    assert [e["event"] for e in logs] == ["data.close_only"]


def test_wide_rows_out_of_order_are_sorted_with_their_prices(tmp_path):
    frame = pd.DataFrame({"Date": ["2024-01-04", "2024-01-02", "2024-01-03"], "X": [3.0, 1.0, 2.0]})
    panel = load_panel(write_csv(tmp_path, frame))
    np.testing.assert_array_equal(
        panel.bar_open, [ms("2024-01-02"), ms("2024-01-03"), ms("2024-01-04")]
    )
    np.testing.assert_array_equal(panel.close[:, 0], [1.0, 2.0, 3.0])


def test_wide_file_without_a_named_date_column_uses_the_first_column(tmp_path):
    frame = pd.DataFrame({"day": ["2024-01-01", "2024-01-02"], "X": [1.0, 2.0]})
    panel = load_panel(write_csv(tmp_path, frame))
    assert panel.symbols == ("X",)
    np.testing.assert_array_equal(panel.bar_open, [ms("2024-01-01"), ms("2024-01-02")])


# -- bad inputs ----------------------------------------------------------------------------------
def test_missing_file_is_a_data_error_naming_it(tmp_path):
    path = tmp_path / "absent.csv"
    with pytest.raises(DataError, match=re.escape(f"{path}: file not found")):
        load_panel(path)


def test_missing_parquet_file_is_a_data_error_naming_it(tmp_path):
    path = tmp_path / "absent.parquet"
    with pytest.raises(DataError, match=re.escape(f"{path}: file not found")):
        load_panel(path)


def test_unknown_extension_is_a_data_error_naming_the_file(tmp_path):
    path = write_csv(tmp_path, long_frame(["2024-01-01"], ["A"]), "bars.json")
    with pytest.raises(DataError, match=re.escape(f"{path}: unknown file type")):
        load_panel(path)


def test_empty_file_is_a_data_error_naming_it(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match=re.escape(f"{path}: cannot be read as a table")):
        load_panel(path)


def test_header_only_file_is_a_data_error_saying_no_rows(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("timestamp,symbol,open,high,low,close\n")
    with pytest.raises(DataError, match=re.escape(f"{path}: no rows")):
        load_panel(path)


def test_long_file_missing_columns_is_a_data_error_naming_them(tmp_path):
    frame = long_frame(["2024-01-01"], ["A"]).drop(columns=["high", "low"])
    path = write_csv(tmp_path, frame)
    with pytest.raises(DataError, match=re.escape(f"{path}: read as long format")) as caught:
        load_panel(path)
    assert str(caught.value).endswith("missing: high, low")


def test_non_numeric_price_is_a_data_error_naming_column_row_and_value(tmp_path):
    frame = long_frame(["2024-01-01", "2024-01-02", "2024-01-03"], ["A"])
    frame["close"] = frame["close"].astype(object)
    frame.loc[2, "close"] = "n/a?"
    path = write_csv(tmp_path, frame)
    # Data row 2 is line 4 of the file (the header is line 1).
    with pytest.raises(
        DataError, match=re.escape(f"{path}: column 'close' row 4 is not a number: 'n/a?'")
    ):
        load_panel(path)


def test_non_numeric_row_number_counts_file_lines_even_after_dropped_duplicates(tmp_path):
    path = tmp_path / "bars.csv"
    path.write_text(
        "timestamp,symbol,open,high,low,close\n"
        "2024-01-01,A,1,2,0.5,1\n"
        "2024-01-01,A,1,2,0.5,1\n"
        "2024-01-02,A,1,2,0.5,1\n"
        "2024-01-03,A,1,2,0.5,oops\n"
    )
    with pytest.raises(DataError, match="column 'close' row 5 is not a number: 'oops'"):
        load_panel(path)


def test_prices_stored_as_numeric_text_load_or_fail_with_a_data_error(tmp_path):
    frame = long_frame(["2024-01-01", "2024-01-02"], ["A"])
    frame["open"] = frame["open"].astype(str)
    path = tmp_path / "bars.parquet"
    frame.to_parquet(path)
    try:
        panel = load_panel(path)
    except DataError as error:
        assert str(path) in str(error) and "'open'" in str(error)
    else:
        np.testing.assert_array_equal(panel.open[:, 0], [100.0, 101.0])


def test_unparseable_timestamp_is_a_data_error_naming_the_column(tmp_path):
    frame = long_frame(["2024-01-01", "2024-01-02"], ["A"])
    frame.loc[1, "timestamp"] = "yesterday-ish"
    path = write_csv(tmp_path, frame)
    with pytest.raises(
        DataError, match=re.escape(f"{path}: column 'timestamp' holds values that are not times")
    ):
        load_panel(path)


def test_empty_timestamp_is_a_data_error_naming_column_and_row(tmp_path):
    path = tmp_path / "bars.csv"
    path.write_text("timestamp,symbol,open,high,low,close\n2024-01-01,A,1,2,0.5,1\n,A,1,2,0.5,1\n")
    expected = f"{path}: column 'timestamp' row 3 is not a time"
    with pytest.raises(DataError, match=re.escape(expected)):
        load_panel(path)


def test_wide_file_with_duplicated_dates_is_a_data_error_naming_the_date_column(tmp_path):
    frame = pd.DataFrame({"date": ["2024-01-01", "2024-01-02", "2024-01-01"], "X": [1.0, 2.0, 3.0]})
    path = write_csv(tmp_path, frame)
    with pytest.raises(DataError, match=re.escape(f"{path}: column 'date' has duplicated dates")):
        load_panel(path)


def test_wide_file_with_a_text_column_is_a_data_error_naming_the_column(tmp_path):
    frame = pd.DataFrame(
        {"date": ["2024-01-01", "2024-01-02"], "X": [1.0, 2.0], "Y": ["1.0", "suspended"]}
    )
    path = write_csv(tmp_path, frame)
    with pytest.raises(
        DataError,
        match=re.escape(
            f"{path}: column 'Y' row 3 (dated 2024-01-02T00:00:00Z) is not a number: 'suspended'"
        ),
    ):
        load_panel(path)


def test_wide_file_with_an_unparseable_date_is_a_data_error_naming_the_column(tmp_path):
    frame = pd.DataFrame({"date": ["2024-01-01", "not a date"], "X": [1.0, 2.0]})
    path = write_csv(tmp_path, frame)
    with pytest.raises(DataError, match=re.escape(f"{path}: column 'date'")):
        load_panel(path)


# -- bad bars and duplicates ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("open", 0.0, "non-positive open"),
        ("high", -1.0, "non-positive high"),
        ("low", 0.0, "non-positive low"),
        ("close", -5.0, "non-positive close"),
        ("volume", -1.0, "negative volume"),
    ],
)
def test_bad_bar_becomes_nan_in_every_column_and_is_logged(tmp_path, column, value, reason):
    frame = long_frame(["2024-01-01", "2024-01-02", "2024-01-03"], ["A", "B"])
    bad_row = (frame["symbol"] == "B") & (frame["timestamp"] == "2024-01-02")
    frame.loc[bad_row, column] = value
    path = write_csv(tmp_path, frame)
    with capture_logs() as logs:
        panel = load_panel(path)
    for name in ("open", "high", "low", "close", "volume"):
        values = getattr(panel, name)
        assert np.isnan(values[1, 1]), name
        assert np.isfinite(np.delete(values.ravel(), 3)).all(), name
    # (2024-01-02, B) is the 4th data row: line 5 of the file.
    assert rejected(logs) == [
        {
            "event": "data.rejected",
            "log_level": "warning",
            "source": str(path),
            "row": 5,
            "symbol": "B",
            "bar_time": "2024-01-02T00:00:00Z",
            "column": column,
            "value": value,
            "reason": reason,
        }
    ]


def test_high_below_low_becomes_nan_and_is_logged_with_symbol_and_reason(tmp_path):
    frame = long_frame(["2024-01-01", "2024-01-02"], ["A", "B"])
    bad_row = (frame["symbol"] == "A") & (frame["timestamp"] == "2024-01-01")
    frame.loc[bad_row, ["high", "low"]] = [90.0, 110.0]
    with capture_logs() as logs:
        panel = load_panel(write_csv(tmp_path, frame))
    assert np.isnan(panel.close[0, 0]) and np.isnan(panel.high[0, 0])
    assert panel.close[0, 1] == 201.0 and panel.close[1, 0] == 102.0
    assert [(e["symbol"], e["reason"]) for e in rejected(logs)] == [("A", "high below low")]


def test_a_bar_with_several_faults_is_logged_once(tmp_path):
    frame = long_frame(["2024-01-01", "2024-01-02"], ["A"])
    frame.loc[0, ["open", "close"]] = [0.0, -1.0]
    with capture_logs() as logs:
        load_panel(write_csv(tmp_path, frame))
    assert [e["reason"] for e in rejected(logs)] == ["non-positive open"]


def test_wide_file_non_positive_close_becomes_nan_and_is_logged(tmp_path):
    frame = pd.DataFrame({"date": ["2024-01-01", "2024-01-02"], "X": [1.0, 0.0], "Y": [2.0, 3.0]})
    with capture_logs() as logs:
        panel = load_panel(write_csv(tmp_path, frame))
    np.testing.assert_array_equal(panel.close, [[1.0, 2.0], [np.nan, 3.0]])
    events = rejected(logs)
    assert [(e["symbol"], e["bar_time"]) for e in events] == [("X", "2024-01-02T00:00:00Z")]
    assert events[0]["reason"] == "non-positive close"


def test_duplicated_timestamp_symbol_rows_are_dropped_keeping_the_last(tmp_path):
    frame = long_frame(["2024-01-01", "2024-01-02"], ["A", "B"])
    again = frame.iloc[[1, 2]].assign(
        close=[555.0, 666.0], high=[700.0, 700.0]
    )  # (01-01, B), (01-02, A)
    path = write_csv(tmp_path, pd.concat([frame, again], ignore_index=True))
    with capture_logs() as logs:
        panel = load_panel(path)
    np.testing.assert_array_equal(panel.close, [[101.0, 555.0], [666.0, 202.0]])
    assert [e for e in logs if e["event"] == "data.duplicates_dropped"] == [
        {"event": "data.duplicates_dropped", "log_level": "warning", "source": str(path), "rows": 2}
    ]


def test_clean_file_logs_nothing(tmp_path):
    with capture_logs() as logs:
        load_panel(write_csv(tmp_path, long_frame(["2024-01-01", "2024-01-02"], ["A", "B"])))
    assert logs == []


# -- real files (slices committed under tests/fixtures/data) --------------------------------------
# Every expectation below is pandas' own reading of the same file, not a number copied from a run.
def read_long(path: Path) -> pd.DataFrame:
    raw = pd.read_csv(path)
    raw["timestamp"] = pd.to_datetime(raw["timestamp"], utc=True)
    return raw


def test_real_binance_5m_slice_loads_every_symbol_and_bar_as_pandas_reads_them():
    with capture_logs() as logs:
        panel = load_panel(CRYPTO_5M)
    raw = read_long(CRYPTO_5M)
    symbols = sorted(raw["symbol"].unique())
    assert panel.symbols == tuple(symbols) and len(symbols) >= 8
    times = pd.DatetimeIndex(sorted(raw["timestamp"].unique()))
    np.testing.assert_array_equal(
        panel.bar_open, times.tz_localize(None).to_numpy("datetime64[ms]")
    )
    # Some pair trades in every 5 minutes of the slice: the union of bars has no gap.
    assert (times[1:] - times[:-1] == pd.Timedelta("5min")).all()
    for column in ("open", "high", "low", "close", "volume"):
        expected = raw.pivot(index="timestamp", columns="symbol", values=column)
        np.testing.assert_array_equal(getattr(panel, column), expected[symbols].to_numpy())
    assert panel.timeframe == np.timedelta64(5, "m") and panel.timeframe_label == "5m"
    # Crypto trades every day: 365 days a year of 24 * 60 / 5 bars each.
    assert panel.periods_per_year() == 365 * (24 * 60 // 5) == 105_120
    # Real bars pass the bar checks, flat ones (high == low) included: nothing is rejected.
    assert logs == []
    flat = raw.loc[raw["high"] == raw["low"]]
    assert not flat.empty
    for _, bar in flat.iterrows():
        row = int(np.flatnonzero(times == bar["timestamp"])[0])
        column = panel.symbols.index(bar["symbol"])
        assert panel.high[row, column] == panel.low[row, column] == bar["low"]


def test_real_binance_5m_slice_is_nan_exactly_at_the_missing_bars():
    panel = load_panel(CRYPTO_5M)
    raw = read_long(CRYPTO_5M)
    times = pd.DatetimeIndex(sorted(raw["timestamp"].unique()))
    present = (
        pd.crosstab(raw["timestamp"], raw["symbol"])
        .reindex(index=times, columns=list(panel.symbols), fill_value=0)
        .to_numpy()
        > 0
    )
    missing = ~present
    assert missing.any()  # the slice holds holes
    for column in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(np.isnan(getattr(panel, column)), missing)
    # Each hole lies inside its symbol's history (priced before and after it): a gap, not a
    # listing or a delisting, and pandas has a row for every other (time, symbol).
    for column in np.flatnonzero(missing.any(axis=0)):
        rows = np.flatnonzero(missing[:, column])
        assert 0 < rows.min() and rows.max() < len(times) - 1
        assert np.isfinite(panel.close[rows.min() - 1, column])
        assert np.isfinite(panel.close[rows.max() + 1, column])
    assert int(present.sum()) == len(raw)


def test_real_stock_close_only_slice_loads_each_ticker_without_volume():
    panel = load_panel(STOCKS_DAILY)
    raw = pd.read_csv(STOCKS_DAILY)
    assert panel.symbols == tuple(raw.columns[1:]) and len(panel.symbols) >= 5
    np.testing.assert_array_equal(
        panel.bar_open, pd.to_datetime(raw["date"]).to_numpy("datetime64[ms]")
    )
    np.testing.assert_array_equal(panel.close, raw.iloc[:, 1:].to_numpy(dtype=float))
    for column in ("open", "high", "low"):
        np.testing.assert_array_equal(getattr(panel, column), panel.close)
    assert panel.volume is None
    assert panel.timeframe_label == "1d"
    assert panel.periods_per_year() == 252.0
    # A ticker listed inside the window keeps its leading NaNs, and only those.
    leading = raw.iloc[:, 1:].isna().cummin().sum()
    late = leading[leading > 0]
    assert not late.empty
    for ticker, count in late.items():
        column = panel.close[:, panel.symbols.index(ticker)]
        assert np.isnan(column[:count]).all() and np.isfinite(column[count:]).all()
