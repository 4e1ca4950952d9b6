"""``deepfactor report``'s numbers on hand-made series, and the command on hand-made run
directories: what it draws from a bare one, and the error that names a missing or broken file.
Real runs go through it in tests/e2e/test_report.py."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.commands.report import EXIT_OK, EXIT_USAGE, add_report_command
from services.commands.report_data import RiskSettings, RunRecord, equal_weight_curve
from services.commands.report_figures import (
    as_of,
    rolling_historical_var,
    stop_drawdown,
    stopped,
    turnover,
    underwater,
    var_breaches,
)

DAYS = pd.date_range("2024-01-01", periods=6, freq="D", tz="UTC", name="timestamp")


def report(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="deepfactor")
    add_report_command(parser.add_subparsers(dest="command", required=True))
    arguments = parser.parse_args(["report", *argv])
    return arguments.run(arguments)


def breaches_by_hand(equity: list[float], forecast: list[float], horizon: int) -> list[int]:
    # The bars whose loss over the last `horizon` bars exceeds the (positive) forecast made
    # `horizon` bars before: plain Python, no pandas.
    found = []
    for t in range(horizon, len(equity)):
        loss = 1.0 - equity[t] / equity[t - horizon]
        var = forecast[t - horizon]
        if not math.isnan(var) and var > 0 and loss > var:
            found.append(t)
    return found


def test_a_breach_is_a_loss_above_the_forecast_made_before_it_not_on_its_own_bar():
    equity = [100.0, 99.0, 97.0, 98.0, 90.0, 91.0]
    # The forecasts made on the losing bars themselves are wide (0.05, 0.10): a check that
    # looked at the same bar's forecast would find no breach at all.
    forecast = [math.nan, 0.02, 0.05, 0.02, 0.10, 0.02]
    check = var_breaches(pd.Series(equity, DAYS), pd.Series(forecast, DAYS), horizon=1)
    assert list(np.flatnonzero(check["breach"])) == breaches_by_hand(equity, forecast, 1) == [2, 4]
    assert check["var"].iloc[2] == 0.02 and check["loss"].iloc[2] == pytest.approx(2 / 99)


def test_a_flat_books_zero_forecast_is_not_checked_and_a_horizon_looks_that_far_back():
    equity = [100.0, 100.0, 99.5, 97.0, 96.0, 99.0]
    forecast = [0.0, 0.0, 0.01, 0.02, 0.03, 0.03]
    one = var_breaches(pd.Series(equity, DAYS), pd.Series(forecast, DAYS), horizon=1)
    # Bar 2 lost 0.5% against a forecast of 0 (the book was flat): not a breach, not checked.
    assert not one["breach"].iloc[2] and math.isnan(one["var"].iloc[2])
    assert list(np.flatnonzero(one["breach"])) == breaches_by_hand(equity, forecast, 1) == [3]
    two = var_breaches(pd.Series(equity, DAYS), pd.Series(forecast, DAYS), horizon=2)
    assert list(np.flatnonzero(two["breach"])) == breaches_by_hand(equity, forecast, 2) == [4]


def test_as_of_keeps_a_snapshots_missing_forecast_instead_of_filling_an_older_one():
    snapshots = pd.Series([0.02, math.nan, 0.03], index=DAYS[[1, 3, 4]])
    values = as_of(snapshots, DAYS).tolist()
    assert math.isnan(values[0])  # before the first snapshot
    assert values[1:3] == [0.02, 0.02]
    assert math.isnan(values[3])  # the snapshot of bar 3 had no forecast
    assert values[4:] == [0.03, 0.03]


def test_the_rolling_historical_var_reads_no_return_after_its_bar():
    rng = np.random.default_rng(3)
    times = pd.date_range("2024-01-01", periods=80, freq="D", tz="UTC")
    equity = pd.Series(100.0 * np.cumprod(1.0 + rng.normal(0.0, 0.01, 80)), times)
    var = rolling_historical_var(equity, 0.95, window=30)
    assert var.iloc[:20].isna().all() and var.iloc[20:].notna().all()  # 20 returns needed
    returns = equity.pct_change().to_numpy()
    assert var.iloc[50] == pytest.approx(-np.quantile(returns[21:51], 0.05))
    crashed = equity.copy()
    crashed.iloc[51:] *= 0.5  # a crash after bar 50 changes nothing up to it
    pd.testing.assert_series_equal(
        rolling_historical_var(crashed, 0.95, window=30).iloc[:51], var.iloc[:51]
    )


def test_the_equal_weight_universe_averages_the_assets_priced_on_both_bars():
    closes = pd.DataFrame(
        {"A": [10.0, 11.0, 12.1, 12.1], "B": [20.0, math.nan, 18.0, 19.8]}, index=DAYS[:4]
    )
    curve = equal_weight_curve(closes, 1000.0)
    # Bar 1: only A (+10%); bar 2: only A again (B had no bar 1); bar 3: A 0%, B +10%.
    assert curve.tolist() == pytest.approx([1000.0, 1100.0, 1210.0, 1270.5])


def record_of(equity: list[float], **frames: pd.DataFrame) -> RunRecord:
    """A loaded run with ``equity`` on the first days of DAYS and the given frames."""
    times = DAYS[: len(equity)]
    return RunRecord(
        run_dir=Path("run"),
        kind="backtest",
        summary={"initial_equity": equity[0], "periods_per_year": 365.0},
        risk_settings=RiskSettings(
            enabled=True, drawdown_stop=0.1, var_confidence=0.99, var_horizon=1, var_window=250
        ),
        equity=pd.DataFrame(
            {"equity": equity, "cash": equity, "gross_exposure": 0.5, "drawdown": 0.0}, times
        ),
        benchmark=None,
        weights=None,
        signals=None,
        risk=frames.get("risk"),
        fills=frames.get("fills"),
    )


def test_turnover_counts_each_fill_on_the_first_bar_closing_at_or_after_it():
    fills = pd.DataFrame(
        {"quantity": [2.0, 1.0, 4.0], "price": [50.0, 100.0, 25.0]},
        index=[DAYS[1], DAYS[1], DAYS[2] + pd.Timedelta(hours=6)],  # the last: inside bar 3
    )
    per_bar = turnover(record_of([1000.0, 1000.0, 800.0, 500.0], fills=fills)).per_bar
    assert per_bar.tolist() == pytest.approx([0.0, 200.0 / 1000.0, 0.0, 100.0 / 500.0])


def test_the_stop_measures_its_drawdown_from_the_peak_since_the_re_entry():
    equity = [100.0, 110.0, 99.0, 99.0, 99.0, 104.0]
    risk = pd.DataFrame(
        {"drawdown_stopped": [False, True, False]}, index=DAYS[[0, 2, 4]]
    )  # stopped on bar 2, re-entered on bar 4
    record = record_of(equity, risk=risk)
    flags = stopped(record)
    assert flags.tolist() == [False, False, True, True, False, False]
    measured = stop_drawdown(record, flags)
    assert measured.iloc[2] == pytest.approx(0.1)  # 99 from 110: the stop's 10%
    assert measured.iloc[4:].tolist() == [0.0, 0.0]  # re-based at 99, then a new peak
    assert underwater(record).iloc[5] == pytest.approx(1.0 - 104.0 / 110.0)
    assert stop_drawdown(record_of(equity), None) is None


def write_bare_run(run_dir: Path, equity: list[float]) -> None:
    """summary.json and equity.csv only, as a backtest wrote them before the report existed."""
    run_dir.mkdir(parents=True)
    times = pd.date_range("2024-01-01", periods=len(equity), freq="D", tz="UTC")
    summary = {"initial_equity": equity[0], "periods_per_year": 365.0, "bars": len(equity)}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    frame = pd.DataFrame(
        {
            "timestamp": [t.isoformat() for t in times],
            "equity": equity,
            "cash": equity,
            "gross_exposure": 0.0,
            "drawdown": 0.0,
        }
    )
    frame.to_csv(run_dir / "equity.csv", index=False)


def test_a_bare_run_directory_reports_what_it_has_and_says_what_it_lacks(tmp_path, capsys):
    rng = np.random.default_rng(5)
    equity = (1000.0 * np.cumprod(1.0 + rng.normal(0.0, 0.01, 60))).tolist()
    write_bare_run(tmp_path / "run", equity)
    assert report("--run", str(tmp_path / "run"), "--json") == EXIT_OK
    figures = json.loads(capsys.readouterr().out)
    page = (tmp_path / "run" / "report.html").read_text()
    # Equity, drawdown, VaR, exposure: drawn; the heatmap: a sentence instead of a blank picture.
    assert page.count('src="data:image/png;base64,') == 4
    assert "The run recorded no signal, so no factor weights." in page
    assert figures["equal_weight"] is None and figures["var_check"]["source"] == "historical"
    assert figures["turnover_source"] == "exposure"
    assert figures["run"]["total_return"] == pytest.approx(equity[-1] / equity[0] - 1.0)


def test_the_table_goes_to_the_terminal_and_the_page_to_out(tmp_path, capsys):
    write_bare_run(tmp_path / "run", [1000.0, 1010.0, 990.0, 1005.0])
    out = tmp_path / "pages" / "one.html"
    assert report("--run", str(tmp_path / "run"), "--out", str(out)) == EXIT_OK
    printed = capsys.readouterr().out
    assert out.is_file() and not (tmp_path / "run" / "report.html").exists()
    assert "  total return    +0.50%" in printed
    assert "  max drawdown    1.98%" in printed  # 990 from a peak of 1010
    assert printed.rstrip().endswith(f"written to      {out}")


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no directory", r"--run \S+/run: not a directory"),
        ("no equity.csv", r"--run \S+/run: no equity\.csv \(not a run directory"),
        ("summary.json not JSON", r"\S+/run/summary\.json: not JSON"),
        ("summary.json without periods", r"\S+/run/summary\.json: no number 'periods_per_year'"),
        ("equity.csv without equity", r"\S+/run/equity\.csv: no column equity"),
        ("equity.csv with no rows", r"\S+/run/equity\.csv: no rows"),
        ("equity.csv with a word", r"\S+/run/equity\.csv: column equity: not a number"),
        ("equity.csv with a gap", r"\S+/run/equity\.csv: a value is missing or not a number"),
        ("events.jsonl with a bad line", r"\S+/run/events\.jsonl: line 1: "),
        ("signals.csv without model", r"\S+/run/signals\.csv: no column model"),
    ],
)
def test_a_missing_or_broken_file_is_named_and_exits_2(tmp_path, capsys, breakage, message):
    run_dir = tmp_path / "run"
    if breakage != "no directory":
        write_bare_run(run_dir, [1000.0, 1010.0, 990.0])
    equity_csv = run_dir / "equity.csv"
    if breakage == "no equity.csv":
        equity_csv.unlink()
    elif breakage == "summary.json not JSON":
        (run_dir / "summary.json").write_text('{"initial_equity": 10')
    elif breakage == "summary.json without periods":
        (run_dir / "summary.json").write_text('{"initial_equity": 1000}')
    elif breakage == "equity.csv without equity":
        equity_csv.write_text("timestamp,cash\n2024-01-01T00:00:00+00:00,1\n")
    elif breakage == "equity.csv with no rows":
        equity_csv.write_text(equity_csv.read_text().splitlines()[0] + "\n")
    elif breakage == "equity.csv with a word":
        equity_csv.write_text(equity_csv.read_text().replace("1010.0", "lots", 1))
    elif breakage == "equity.csv with a gap":
        equity_csv.write_text(equity_csv.read_text().replace("1010.0", "", 1))
    elif breakage == "events.jsonl with a bad line":
        (run_dir / "events.jsonl").write_text('{"id": "x"}\n{"id": "y"}\n')
    elif breakage == "signals.csv without model":
        (run_dir / "signals.csv").write_text("timestamp,momentum\n2024-01-01T00:00:00Z,1\n")
    assert report("--run", str(run_dir)) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and len(captured.err.splitlines()) == 1
    assert re.search(message, captured.err), captured.err
    assert not (run_dir / "report.html").exists()


def test_an_out_that_is_a_directory_is_refused_before_anything_is_written(tmp_path, capsys):
    write_bare_run(tmp_path / "run", [1000.0, 1010.0, 990.0])
    assert report("--run", str(tmp_path / "run"), "--out", str(tmp_path)) == EXIT_USAGE
    assert "is a directory, expected a file name" in capsys.readouterr().err
