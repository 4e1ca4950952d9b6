"""Bad arguments, tried as a hostile user would: each is refused before any work starts, with
exit code 2 and one line that names what was wrong."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.cli_process import deepfactor

ROOT = Path(__file__).resolve().parents[2]


def long_file(path: Path, symbols: list[str], n_days: int = 120) -> Path:
    rng = np.random.default_rng(5)
    days = pd.date_range("2024-01-01", periods=n_days, freq="D")
    rows = []
    for symbol in symbols:
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, n_days)))
        rows.append(
            pd.DataFrame(
                {
                    "timestamp": days.strftime("%Y-%m-%d"),
                    "symbol": symbol,
                    "open": close,
                    "high": close * 1.01,
                    "low": close * 0.99,
                    "close": close,
                    "volume": 1_000.0,
                }
            )
        )
    pd.concat(rows).to_csv(path, index=False)
    return path


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def data(tmp_path) -> Path:
    return long_file(tmp_path / "bars.csv", ["A", "B", "C", "D", "E", "F", "G", "H"])


@pytest.mark.parametrize("shape", ["is a file", "under a file"])
def test_backtest_refuses_an_unusable_out_before_reading_the_data(tmp_path, shape):
    blocker = tmp_path / "taken"
    blocker.write_text("not a directory")
    out = blocker if shape == "is a file" else blocker / "run"
    # The data does not exist either: the out check comes first, before any work.
    result = deepfactor("backtest", "--data", str(tmp_path / "absent.csv"), "--out", str(out))
    assert result.returncode == 2
    line = one_error_line(result)
    assert f"--out {out}" in line
    assert ("is a file, expected a directory" if shape == "is a file" else "lies under") in line
    assert blocker.read_text() == "not a directory"


def test_factors_report_refuses_an_out_that_is_a_file(tmp_path, data):
    out = tmp_path / "report.csv"
    out.write_text("")
    result = deepfactor("factors", "report", "--data", str(data), "--out", str(out))
    assert result.returncode == 2 and f"--out {out}: is a file" in one_error_line(result)


def test_data_fetch_refuses_an_out_that_is_a_directory_before_any_request(tmp_path):
    result = deepfactor(
        "data", "fetch", "--exchange", "binance", "--symbols", "BTC/USDT",
        "--timeframe", "1d", "--since", "2024-01-01", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 2
    assert f"--out {tmp_path}: is a directory, expected a file name" in one_error_line(result)


def test_paper_refuses_negative_bars(tmp_path):
    result = deepfactor("paper", "--bars", "-5", "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "--bars must be a number of bars >= 0 (0: all), received -5" in one_error_line(result)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("speed", ["-1", "fast", "inf", "nan"])
def test_paper_refuses_a_speed_that_is_not_a_pace(tmp_path, speed):
    result = deepfactor("paper", "--speed", speed, "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "--speed must be bars per second >= 0, or 'max'" in one_error_line(result)
    assert repr(speed) in result.stderr


def test_paper_speed_0_means_no_cap_as_the_reference_config_says(tmp_path, data):
    out = tmp_path / "run"
    result = deepfactor(
        "paper", "--data", str(data), "--bars", "30", "--speed", "0", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert "bars            30" in result.stdout
    assert (out / "summary.json").exists()


def test_paper_refuses_an_out_under_a_file(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    result = deepfactor("paper", "--bars", "5", "--out", str(blocker / "run"))
    assert result.returncode == 2
    assert f"--out {blocker / 'run'}: lies under {blocker}" in one_error_line(result)


@pytest.mark.parametrize("command", ["backtest", "paper"])
def test_a_universe_too_small_for_top_fraction_is_refused_saying_why(tmp_path, command):
    data = long_file(tmp_path / "one.csv", ["ONLY"])
    result = deepfactor(command, "--data", str(data), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    line = one_error_line(result)
    assert "[portfolio] top_fraction 0.25 selects no asset from the 1 symbol(s)" in line
    assert f"--data {data}" in line and "at least 4 symbols" in line


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[schedule]\ncron = "61 * * * *"\n', "[schedule] cron must be a 5-field crontab"),
        ('[schedule]\ninterval = "7d"\n', "set exactly one of cron and interval"),
        ('[[strategy.factors]]\nname = "no_such_factor"\n', "received 'no_such_factor'"),
        (
            '[[strategy.factors]]\nname = "momentum"\nparams = { lookback = -5 }\n',
            "parameter 'lookback' must be >= 1, received -5",
        ),
    ],
    ids=["bad-cron", "cron-and-interval", "unknown-factor", "negative-lookback"],
)
def test_config_check_runs_every_check_that_start_up_runs(tmp_path, data, body, expected):
    config = tmp_path / "bad.toml"
    config.write_text(body)
    checked = deepfactor("config", "check", "--config", str(config))
    assert checked.returncode == 2
    assert f"config {config}: " in one_error_line(checked) and expected in checked.stderr
    started = deepfactor(
        "backtest", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "o")
    )
    assert started.returncode == 2 and one_error_line(started) == one_error_line(checked)
