"""The command line the way a user runs it: real files in both shapes (slices committed under
tests/fixtures/data), the output contract, and a SIGTERM to a running paper session."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import redis

from engine.bus import EmbeddedRedis
from tests.cli_process import deepfactor

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "fixtures" / "data"
# long OHLCV, 10 pairs, 1,152 five-minute bars (four days)
CRYPTO = DATA / "freqtrade_binance_btc_5m_2018-01-14_17.csv.gz"
EQUITIES = DATA / "stock_prices_2012-2013.csv.gz"  # wide close-only, 7 tickers, 502 days
PEER_MOMENTUM = ROOT / "deploy" / "configs" / "peer-momentum.toml"
# The peer-momentum job scaled to four days of 5-minute bars: every 4 hours, the return from a
# day (288 bars) to an hour (12 bars) before the decision bar, top 25%, filled at its close.
INTRADAY_MOMENTUM = """
[schedule]
name = "four-hourly"
cron = ""
interval = "4h"

[strategy]
compute_on = "rebalance"
winsorize = "none"

[[strategy.factors]]
name = "momentum"
params = { lookback = 288, skip = 12 }

[portfolio]
construction = "top-k"
top_fraction = 0.25
max_weight = 1.0

[risk]
enabled = false

[broker]
fee_rate = 0.001
fill_price = "close"
quote_currency = "BTC"
"""
SUMMARY_KEYS = {
    "start",
    "end",
    "bars",
    "initial_equity",
    "final_equity",
    "total_return",
    "cagr",
    "sharpe",
    "max_drawdown",
    "var_95",
    "var_99",
    "orders",
    "fills",
    "fees",
    "order_outcomes",
    "partial_fills",
    "turnover",
    "periods_per_year",
    "model",
    "signal_fallbacks",
    "risk_limits",
    "limits_acted",
}
EQUITY_COLUMNS = ["timestamp", "equity", "cash", "gross_exposure", "drawdown"]


def decision_times(times: pd.DatetimeIndex, step: str, every: str) -> pd.DatetimeIndex:
    """An ``every`` schedule's fire times within bars opening at ``times``: from the first bar's
    close to the last one's, where a bar closes one ``step`` after it opens."""
    first_close, last_close = times.min() + pd.Timedelta(step), times.max() + pd.Timedelta(step)
    return pd.date_range(first_close.ceil(every), last_close, freq=every)


@pytest.mark.parametrize(
    ("data", "config", "step", "days_per_year", "schedule"),
    [
        (CRYPTO, INTRADAY_MOMENTUM, "5min", 365, ("4h", 288)),
        (EQUITIES, PEER_MOMENTUM, "1D", 252, None),
    ],
    ids=["long-crypto-5m", "wide-equities-1d"],
)
def test_backtest_on_a_real_file_writes_the_contract_files(
    tmp_path, data, config, step, days_per_year, schedule
):
    if isinstance(config, str):
        (tmp_path / "config.toml").write_text(config)
        config = tmp_path / "config.toml"
    out = tmp_path / "out"
    result = deepfactor("backtest", "--data", str(data), "--out", str(out), "--config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS
    times = pd.to_datetime(pd.read_csv(data).iloc[:, 0].unique())
    assert pd.Series(times).diff().mode()[0] == pd.Timedelta(step)  # the file's bar step
    # Bars a year: trading days a year times bars a day.
    assert summary["periods_per_year"] == days_per_year * (pd.Timedelta("1D") / pd.Timedelta(step))
    assert summary["orders"] > 0 and summary["fills"] > 0
    assert summary["bars"] == len(times)  # every bar time of the file
    with (out / "equity.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == EQUITY_COLUMNS
    assert len(rows) - 1 == summary["bars"]
    assert float(rows[-1][1]) == pytest.approx(summary["final_equity"], rel=1e-12)
    log_lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    rebalances = [
        line
        for line in log_lines
        if line["event"] == "rebalance.completed" and line["kind"] == "scheduled"
    ]
    assert rebalances and all(line["service"] == "rebalance" for line in rebalances)
    if schedule is not None:
        every, lookback = schedule
        # One rebalance at each fire time within the bars, deciding on the bar closing then.
        expected = decision_times(times, step, every)
        assert len(expected) > 10
        assert [pd.Timestamp(line["decision_time"]) for line in rebalances] == list(expected)
        # Nothing is held until the decision bar has `lookback` bars before it; then some is.
        first_scored = times.min() + (lookback + 1) * pd.Timedelta(step)
        for line in rebalances:
            warm = pd.Timestamp(line["decision_time"]) >= first_scored
            assert (line["holdings"] > 0) == warm, line
    assert all(line["corr"] == line["rebalance_id"] for line in rebalances)
    assert all({"service", "event", "corr"} <= set(line) for line in log_lines)


def test_backtest_names_a_missing_file_and_exits_2(tmp_path):
    result = deepfactor("backtest", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path))
    assert result.returncode == 2
    assert "nope.csv: file not found" in result.stderr


def test_backtest_names_a_bad_strategy(tmp_path):
    result = deepfactor(
        "backtest", "--data", "x.csv", "--out", str(tmp_path), "--strategy", "magic"
    )
    assert result.returncode == 2 and "--strategy must be one of" in result.stderr


def test_sigterm_stops_paper_cleanly_with_nothing_pending(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.commands.cli",
            "paper",
            "--bars",
            "100000",
            "--speed",
            "40",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("DEEPFACTOR_")},
    )
    try:
        deadline = time.monotonic() + 60
        seen_rebalance = False
        while not seen_rebalance and time.monotonic() < deadline:
            line = process.stderr.readline()
            seen_rebalance = '"rebalance.completed"' in line
        assert seen_rebalance, "paper never rebalanced"
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-2000:]
    assert "paper (stopped early)" in stdout
    stopped = [json.loads(line) for line in stderr.splitlines() if '"service.stopped"' in line]
    assert sorted(line["service"] for line in stopped) == [
        "archive", "execution", "factor-update", "rebalance", "recorder", "signal",
    ]  # fmt: skip
    assert all(line["pending"] == 0 for line in stopped)
    # Independently: reopen the run's Redis data and look for unacknowledged messages.
    with EmbeddedRedis(out / "redis") as server:
        client = redis.Redis.from_url(server.url)
        pending, groups = 0, 0
        for key in client.scan_iter(match="deepfactor-*", _type="stream"):
            for group in client.xinfo_groups(key):
                pending += group["pending"]
                groups += 1
        client.close()
    assert groups >= 10 and pending == 0


def test_factors_report_on_the_bundled_sample_writes_table_json_and_picture(tmp_path):
    from engine.data import SAMPLE_PATH, sample_panel
    from strategies.factors import FACTORS

    # Every factor, less the volume ones where the sample is close-only.
    close_only = sample_panel().volume is None
    expected = {name for name, spec in FACTORS.items() if not (close_only and spec.needs_volume)}

    result = deepfactor(
        "factors", "report", "--data", str(SAMPLE_PATH), "--out", str(tmp_path), "--horizon", "7"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ic_mean" in result.stdout and "icir" in result.stdout
    report = json.loads((tmp_path / "factor_report.json").read_text())
    assert {row["factor"] for row in report["factors"]} == expected
    assert report["horizon_bars"] == 7
    # beta's window is the longest; on close-only bars high == low, so range_volatility is 0
    # everywhere and has no rank IC at all.
    excluded = {"beta"} | ({"range_volatility"} if close_only else set())
    assert all(row["periods"] > 100 for row in report["factors"] if row["factor"] not in excluded)
    png = (tmp_path / "factor_returns.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_factors_report_on_close_only_data_turns_volume_factors_off(tmp_path):
    result = deepfactor(
        "factors", "report", "--data", str(EQUITIES), "--out", str(tmp_path), "--horizon", "21"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    warning = next(
        json.loads(line)
        for line in result.stderr.splitlines()
        if '"factors.volume_factors_off"' in line
    )
    assert set(warning["factors"]) == {"amihud", "dollar_volume", "turnover", "volume_trend"}
    names = {
        row["factor"]
        for row in json.loads((tmp_path / "factor_report.json").read_text())["factors"]
    }
    assert "amihud" not in names and "momentum_12_1" in names


def test_data_fetch_names_an_unknown_exchange(tmp_path):
    result = deepfactor(
        "data",
        "fetch",
        "--exchange",
        "nosuchexchange",
        "--symbols",
        "BTC/USDT",
        "--timeframe",
        "1h",
        "--since",
        "2024-01-01",
        "--out",
        str(tmp_path / "x.parquet"),
    )
    assert result.returncode == 1 and "nosuchexchange" in result.stderr
    assert not (tmp_path / "x.parquet").exists()


def test_a_bad_factor_in_the_config_stops_paper_before_anything_starts(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(
        '[[strategy.factors]]\nname = "momentum"\nparams = { lookback = 5, skip = 9 }\n'
    )
    result = deepfactor(
        "paper", "--config", str(config), "--bars", "5", "--out", str(tmp_path / "run")
    )
    assert result.returncode == 2
    assert "[strategy.factors[0]] params" in result.stderr and "skip" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_reader_that_goes_away_ends_the_command_quietly():
    # `deepfactor config check | head -1`, with the reader gone before the first write.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "services.commands.cli", "config", "check"],
            cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert result.returncode == 141, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
