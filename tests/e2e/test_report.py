"""``deepfactor report`` on run directories the real commands wrote: a backtest of the committed
equities slice, and a paper run over Redis. Every picture is a PNG that decodes, and every figure
checked here is computed again with pandas from the run's own files (or the data file)."""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import redis

from services.commands.cli import main
from services.commands.replay import load_run_config
from services.commands.report import add_report_command
from services.commands.report_data import load_run
from tests.conftest import delete_namespaces
from tests.e2e.test_paper_resume import environment, run_to_end

ROOT = Path(__file__).resolve().parents[2]
EQUITIES = ROOT / "tests" / "fixtures" / "data" / "stock_prices_2012-2013.csv.gz"
HEADINGS = [
    "Equity",
    "Drawdown",
    "VaR against realised losses",
    "Factor weights chosen over time",
    "Exposure and turnover",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def report(run_dir: Path) -> dict:
    """Run ``deepfactor report --run DIR --json`` in process; return the printed figures."""
    parser = argparse.ArgumentParser(prog="deepfactor")
    add_report_command(parser.add_subparsers(dest="command", required=True))
    arguments = parser.parse_args(["report", "--run", str(run_dir), "--json"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert arguments.run(arguments) == 0
    return json.loads(printed.getvalue())


def pictures(page: str) -> list[tuple[str, np.ndarray]]:
    """Each embedded picture's alt text and pixels, checked to be a PNG on the way."""
    found = []
    for data, alt in re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]*)">', page):
        png = base64.b64decode(data, validate=True)
        assert png.startswith(PNG_SIGNATURE)
        found.append((alt, matplotlib.image.imread(io.BytesIO(png), format="png")))
    return found


def curve(run_dir: Path) -> tuple[pd.Series, float]:
    """equity.csv's equity and summary.json's initial equity, read with pandas and json."""
    equity = pd.read_csv(run_dir / "equity.csv", index_col="timestamp")["equity"]
    return equity, json.loads((run_dir / "summary.json").read_text())["initial_equity"]


@pytest.fixture(scope="module")
def backtest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``deepfactor backtest`` on 502 days of 7 stocks, with the default (equal-weight) config."""
    out = tmp_path_factory.mktemp("report") / "backtest"
    assert main(["backtest", "--data", str(EQUITIES), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def backtest_figures(backtest_dir: Path) -> dict:
    """The backtest's report, written once (report.html in the run directory)."""
    return report(backtest_dir)


@pytest.fixture(scope="module")
def paper_dir(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``deepfactor paper`` on 120 bars of the synthetic market over a real Redis."""
    base = f"test-report-{uuid.uuid4().hex[:8]}"
    out = tmp_path_factory.mktemp("report") / "paper"
    try:
        run_to_end(out, environment(redis_url, base), bars=120)
        yield out
    finally:
        delete_namespaces(redis_url, base)


def test_a_backtest_report_embeds_a_picture_of_each_kind_that_decodes(
    backtest_dir, backtest_figures
):
    drawn = pictures((backtest_dir / "report.html").read_text())
    assert [alt for alt, _ in drawn] == HEADINGS
    # Heights in pixels: 100 dpi times each figure's inches (the heatmap grows with factors).
    assert [pixels.shape for _, pixels in drawn] == [
        (360, 1000, 4),
        (320, 1000, 4),
        (340, 1000, 4),
        (260, 1000, 4),
        (440, 1000, 4),
    ]
    for alt, pixels in drawn:  # something drawn, not a blank canvas
        rgba = np.ascontiguousarray((pixels * 255).round().astype(np.uint8))
        assert len(np.unique(rgba.view(np.uint32))) > 20, alt


def test_the_backtest_report_figures_match_pandas_on_its_files(backtest_dir, backtest_figures):
    figures = backtest_figures
    equity, initial = curve(backtest_dir)
    path = pd.concat([pd.Series([initial]), equity.reset_index(drop=True)])
    assert figures["run"]["total_return"] == pytest.approx(equity.iloc[-1] / initial - 1.0)
    assert figures["run"]["max_drawdown"] == pytest.approx((1.0 - path / path.cummax()).max())
    assert figures["run"]["final_equity"] == equity.iloc[-1]
    summary = json.loads((backtest_dir / "summary.json").read_text())
    for name in ("total_return", "cagr", "sharpe", "max_drawdown", "var_95", "var_99"):
        assert figures["run"][name] == pytest.approx(summary[name], rel=1e-12), name
    # The equal-weight universe, straight from the data file: each day the mean return of the
    # stocks priced on both days, compounded.
    closes = pd.read_csv(EQUITIES, index_col=0)
    moves = closes.pct_change(fill_method=None).mean(axis=1).fillna(0.0)
    assert figures["equal_weight"]["total_return"] == pytest.approx((1.0 + moves).prod() - 1.0)
    assert figures["bars"] == len(closes) == len(equity)


def test_the_backtest_writes_what_the_report_draws(backtest_dir):
    summary = json.loads((backtest_dir / "summary.json").read_text())
    equity, initial = curve(backtest_dir)
    signals = pd.read_csv(backtest_dir / "signals.csv", index_col="timestamp")
    assert list(signals.index) == list(equity.index)  # one signal per bar, on its close
    # The default config's factor weights (momentum, trend up; volatility, max return down).
    assert (signals["model"] == "equal-weight").all() and not signals["fallback"].any()
    assert signals.iloc[:, 2:].drop_duplicates().to_numpy().tolist() == [[0.25, 0.25, -0.25, -0.25]]
    fills = pd.read_csv(backtest_dir / "fills.csv")
    assert len(fills) == fills["fill_id"].nunique() == summary["fills"]
    traded = (fills["quantity"] * fills["price"]).sum()
    average = pd.concat([pd.Series([initial]), equity]).mean()
    assert traded / average == pytest.approx(summary["turnover"], rel=1e-12)
    assert fills["fee"].sum() == pytest.approx(summary["fees"], rel=1e-12)
    risk = pd.read_csv(backtest_dir / "risk.csv")
    assert risk["expected_var"].notna().sum() > 100 and not risk["drawdown_stopped"].any()
    benchmark = pd.read_csv(backtest_dir / "benchmark.csv", index_col="timestamp")
    assert list(benchmark.index) == list(equity.index)
    assert benchmark["equal_weight"].iloc[0] == initial
    config = load_run_config(backtest_dir / "config.json")  # the run's own, valid config
    assert config.risk.drawdown_stop == summary["risk_limits"]["drawdown_stop"]


def test_the_var_breaches_of_a_backtest_match_an_as_of_join_in_pandas(
    backtest_dir, backtest_figures
):
    figures = backtest_figures
    equity = pd.read_csv(backtest_dir / "equity.csv", parse_dates=["timestamp"])
    risk = pd.read_csv(backtest_dir / "risk.csv", parse_dates=["timestamp"])
    # The forecast standing at each bar: the last snapshot at or before it.
    joined = pd.merge_asof(equity, risk[["timestamp", "expected_var"]], on="timestamp")
    loss = 1.0 - joined["equity"] / joined["equity"].shift(1)
    forecast = joined["expected_var"].shift(1)  # made one bar before the loss
    checked = forecast.notna() & (forecast > 0) & loss.notna()
    check = figures["var_check"]
    assert check["source"] == "model" and check["horizon"] == 1
    assert check["bars_checked"] == checked.sum() > 400
    assert check["breaches"] == (checked & (loss > forecast)).sum() > 0
    assert check["expected_breaches"] == pytest.approx(checked.sum() * 0.01)


def test_a_paper_report_draws_the_signals_and_fills_of_its_event_log(paper_dir):
    figures = report(paper_dir)
    page = (paper_dir / "report.html").read_text()
    assert [alt for alt, _ in pictures(page)] == HEADINGS
    events = [json.loads(line) for line in (paper_dir / "events.jsonl").read_text().splitlines()]
    signals = [e["payload"] for e in events if e["type"] == "Signal"]
    assert figures["signals"] == len(signals) == 120
    assert figures["fallback_signals"] == sum(s["fallback"] for s in signals)
    assert figures["var_check"]["source"] == "model" and figures["turnover_source"] == "fills"
    equity, initial = curve(paper_dir)
    assert figures["run"]["total_return"] == pytest.approx(equity.iloc[-1] / initial - 1.0)
    # The equal-weight universe from the log's bars, read with json and pandas alone.
    bars = [e["payload"] for e in events if e["type"] == "BarSet"]
    closes = pd.DataFrame([dict(zip(b["symbols"], b["close"])) for b in bars])
    moves = closes.pct_change(fill_method=None).mean(axis=1).fillna(0.0)
    assert figures["equal_weight"]["total_return"] == pytest.approx((1.0 + moves).prod() - 1.0)
    fills = {e["payload"]["fill_id"]: e["payload"] for e in events if e["type"] == "Fill"}
    summary = json.loads((paper_dir / "summary.json").read_text())
    assert len(fills) == summary["fills"] > 0


def test_an_account_without_an_event_log_is_read_from_its_redis(
    paper_dir, redis_url, tmp_path, monkeypatch
):
    # An account run as processes (`up`, `run SERVICE`) has no events.jsonl: the report reads
    # the account's streams. The same account read both ways gives the same frames.
    copy = tmp_path / "account"
    shutil.copytree(paper_dir, copy, ignore=shutil.ignore_patterns("events.jsonl", "redis"))
    monkeypatch.setenv("DEEPFACTOR_BUS__REDIS_URL", redis_url)
    from_log, from_redis = load_run(paper_dir), load_run(copy)
    assert from_redis.kind == from_log.kind == "paper"
    assert len(from_redis.signals) == 120
    for name in ("signals", "weights", "risk", "fills"):
        pd.testing.assert_frame_equal(getattr(from_redis, name), getattr(from_log, name))
    pd.testing.assert_series_equal(from_redis.benchmark, from_log.benchmark)
    client = redis.Redis.from_url(redis_url)
    try:  # read without a consumer group: nothing of the account was added or held back
        namespace = json.loads((paper_dir / "account.json").read_text())["namespace"]
        groups = {g["name"].decode() for g in client.xinfo_groups(f"{namespace}:signals")}
        assert "report" not in groups
    finally:
        client.close()
