"""``deepfactor evaluate`` as a user runs it: on a close-only daily table, every strategy walk-
forward with the limits on and off; the figures checked against pandas from the written equity
curves; the same results.json with one process, a process pool and a local Ray; unusable files
refused with what is needed."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.data.synthetic import synthetic_panel
from tests.cli_process import deepfactor as run_cli

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
[model]
epochs = 2
hidden = 4
lookback = 5
min_train = 150
retrain_every = 100
[log]
level = "warning"
"""
STRATEGIES = ("lstm", "asset-lstm", "equal-weight", "trailing-ic", "ridge", "universe")


deepfactor = functools.partial(run_cli, timeout=600)


def close_table(path: Path, n_assets: int, n_bars: int) -> Path:
    """A wide close-only daily table (timestamp, then one close column per asset)."""
    panel = synthetic_panel(n_assets=n_assets, n_bars=n_bars, seed=3)
    frame = pd.DataFrame(
        panel.close, index=pd.to_datetime(panel.bar_open, utc=True), columns=panel.symbols
    )
    frame.index.name = "timestamp"
    frame.to_csv(path)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    close_table(root / "closes.csv", n_assets=8, n_bars=520)
    (root / "config.toml").write_text(CONFIG)
    return root


def evaluate(workspace: Path, out: str, *extra: str) -> Path:
    result = deepfactor(
        "evaluate",
        "--data",
        str(workspace / "closes.csv"),
        "--config",
        str(workspace / "config.toml"),
        "--out",
        str(workspace / out),
        "--seeds",
        "2",
        "--no-progress",
        *extra,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return workspace / out


@pytest.fixture(scope="module")
def single(workspace: Path) -> Path:
    return evaluate(workspace, "single", "--jobs", "1")


def test_every_strategy_is_evaluated_with_limits_on_and_off(single: Path):
    results = json.loads((single / "results.json").read_text())
    assert tuple(results["strategy_order"]) == STRATEGIES
    assert set(results["strategies"]) == set(STRATEGIES)
    for key, entry in results["strategies"].items():
        seeds = 2 if key in ("lstm", "asset-lstm") else 1
        for limits in ("limits_on", "limits_off"):
            assert len(entry[limits]["runs"]) == seeds
    # Limits on and off are different accounts: the stops acted only where they were on.
    on = results["strategies"]["lstm"]["limits_on"]["runs"][0]
    off = results["strategies"]["lstm"]["limits_off"]["runs"][0]
    assert on["limits_acted"] and not off["limits_acted"]
    assert on["metrics"] != off["metrics"]
    # The LSTMs against every other strategy, limits on and off.
    assert len(results["sharpe_tests"]) == 2 * 4 * 2
    assert results["setup"]["walk_forward_windows"] >= 3
    for name in ("table.md", "curves.csv", "equity.png", "drawdown.png", "regimes.png"):
        assert (single / name).stat().st_size > 0
    last = (single / "table.md").read_text().strip().splitlines()[-1]
    assert last.startswith(("The paper's claim holds", "The paper's claim does not hold")), last
    assert last == results["verdict"]["sentence"]


def independent_figures(equity: pd.Series, periods_per_year: float) -> dict[str, float]:
    """The figures from an equity curve with pandas alone (zero risk-free rate)."""
    returns = equity.pct_change().dropna()
    years = len(returns) / periods_per_year
    quantile_95 = returns.quantile(0.05)  # linear interpolation, as numpy's default
    drawdown = 1.0 - equity / equity.cummax()
    downside = math.sqrt((returns.clip(upper=0.0) ** 2).mean())
    cagr = (equity.iloc[-1] / equity.iloc[0]) ** (1.0 / years) - 1.0
    return {
        "total_return": equity.iloc[-1] / equity.iloc[0] - 1.0,
        "annualised_return": cagr,
        "annualised_volatility": returns.std() * math.sqrt(periods_per_year),
        "sharpe_ratio": returns.mean() / returns.std() * math.sqrt(periods_per_year),
        "sortino_ratio": returns.mean() / downside * math.sqrt(periods_per_year),
        "max_drawdown": drawdown.max(),
        "calmar_ratio": cagr / drawdown.max(),
        "var_95": -quantile_95,
        "expected_shortfall_95": -returns[returns <= quantile_95].mean(),
        "var_99": -returns.quantile(0.01),
        "period_hit_rate": (returns > 0).mean(),
    }


@pytest.mark.parametrize(
    "column, strategy, limits",
    [
        ("lstm:s0:on", "lstm", "limits_on"),
        ("universe:-:off", "universe", "limits_off"),
    ],
)
def test_figures_match_pandas_from_the_equity_curve(single: Path, column, strategy, limits):
    results = json.loads((single / "results.json").read_text())
    curves = pd.read_csv(single / "curves.csv", index_col="timestamp", parse_dates=True)
    equity = curves[column].dropna()
    assert str(equity.index[0])[:10] == results["data"]["evaluation_start"][:10]
    # Daily bars every calendar day: 365 a year, found here from the timestamps themselves.
    step = (equity.index[1:] - equity.index[:-1]).min()
    periods_per_year = pd.Timedelta(days=365) / step
    assert results["data"]["periods_per_year"] == pytest.approx(periods_per_year)
    run = results["strategies"][strategy][limits]["runs"][0]["metrics"]
    assert run["periods"] == len(equity) - 1
    for name, expected in independent_figures(equity, periods_per_year).items():
        assert run[name] == pytest.approx(expected, rel=1e-9, abs=1e-12), name
    # The seeds' mean is the mean of the seeds' figures.
    runs = results["strategies"]["lstm"]["limits_on"]["runs"]
    mean = results["strategies"]["lstm"]["limits_on"]["mean"]["sharpe_ratio"]
    assert mean == pytest.approx(np.mean([r["metrics"]["sharpe_ratio"] for r in runs]))


def test_the_sharpe_test_is_jkm_on_the_seeds_mean_returns(single: Path):
    from scipy import stats

    results = json.loads((single / "results.json").read_text())
    curves = pd.read_csv(single / "curves.csv", index_col="timestamp", parse_dates=True)
    a = (
        pd.concat([curves["lstm:s0:on"].pct_change(), curves["lstm:s1:on"].pct_change()], axis=1)
        .mean(axis=1)
        .dropna()
    )
    b = curves["equal-weight:-:on"].pct_change().dropna()
    # Memmel (2003): theta = (2 - 2 rho + (SR_a^2 + SR_b^2 - 2 SR_a SR_b rho^2) / 2) / T.
    sr_a, sr_b = a.mean() / a.std(), b.mean() / b.std()
    rho, t = a.corr(b), len(a)
    theta = (2 - 2 * rho + 0.5 * (sr_a**2 + sr_b**2 - 2 * sr_a * sr_b * rho**2)) / t
    z = (sr_a - sr_b) / math.sqrt(theta)
    (test,) = [
        x
        for x in results["sharpe_tests"]
        if (x["strategy"], x["baseline"], x["limits"]) == ("lstm", "equal-weight", "on")
    ]
    assert test["jkm_seed_mean"]["statistic"] == pytest.approx(z, rel=1e-9)
    assert test["jkm_seed_mean"]["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)


def test_a_process_pool_and_ray_give_the_same_results(workspace: Path, single: Path):
    expected = (single / "results.json").read_bytes()
    pool = evaluate(workspace, "pool", "--jobs", "2")
    assert (pool / "results.json").read_bytes() == expected
    pytest.importorskip("ray")
    ray = evaluate(workspace, "ray", "--jobs", "2", "--executor", "ray")
    assert (ray / "results.json").read_bytes() == expected


def refused(tmp_path: Path, workspace: Path, name: str, n_assets: int, n_bars: int) -> str:
    """Evaluate a close table of that shape; it must exit 2 and write no results: stderr."""
    data = close_table(tmp_path / name, n_assets=n_assets, n_bars=n_bars)
    config = str(workspace / "config.toml")
    out = tmp_path / "out"
    result = deepfactor("evaluate", "--data", str(data), "--config", config, "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert not (out / "results.json").exists()
    return result.stderr


def test_too_few_assets_is_refused_with_what_is_needed(tmp_path: Path, workspace: Path):
    stderr = refused(tmp_path, workspace, "four.csv", n_assets=4, n_bars=520)
    assert "four.csv: 4 asset(s)" in stderr and "at least 5" in stderr


def test_too_short_a_file_is_refused_with_what_is_needed(tmp_path: Path, workspace: Path):
    stderr = refused(tmp_path, workspace, "short.csv", n_assets=8, n_bars=230)
    assert "short.csv: 230 bars" in stderr
    assert "needs at least 2 walk-forward windows" in stderr
    assert "min_train (150)" in stderr and "retrain_every (100)" in stderr
