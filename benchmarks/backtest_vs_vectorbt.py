"""Backtest speed and agreement: the "peer momentum" job through deepfactor and through vectorbt.

The job (deploy/configs/peer-momentum.toml): monthly rebalance when the month turns (cron
"0 0 1 * *" UTC, decided on the last bar closing at or before the fire time, i.e. the last bar
of each month; no fire after the last bar's close), 12-1 momentum (close[d-21] / close[d-252]
- 1 in panel rows), top 25% of the assets with a valid signal (count rounded down, ties by
column order), equal-weight, long-only, gross 100%, filled at the decision bar's close, 10 bps
fees, fractional quantities, 1,000,000 initial cash.

deepfactor runs in-process (``services.commands.backtest.run_backtest``). vectorbt gets a
target-weight matrix built here with numpy from the panel's closes and bar times (independently of
deepfactor's strategies/services code) and ``Portfolio.from_orders(size_type="targetpercent",
cash_sharing=True, call_seq="auto")``, which sells first, then buys from the smallest order and
cuts a buy larger than the cash to what the cash pays for, fees included: deepfactor's rules.

Data sets: a seeded synthetic 500 x 2,520 panel, the 19 US stocks of ../shared/data (daily,
1990-2024: few assets, many bars, the hardest case for a per-event design) and the 43 Binance
USDT pairs (daily, 2017-2026, listed over the years). The files are --equities and --crypto;
by default they are read from ../shared/data beside the checkout when it is there; otherwise the
equities set falls back to the bundled sample (engine/data/sample: the same 19 stocks,
2014-2024) and the crypto set, which nothing in the repository stands in for, is skipped.

In-process timings exclude imports and data loading and are the best of ``--repeat`` runs.
vectorbt's time includes building its weight matrix (also reported alone as vectorbt_signal_s);
its numba compilation is paid by a warm-up call on a small slice first (vectorbt_warmup_s).

Whole-process timings (best of ``--repeat``, the two tools interleaved) start a fresh interpreter
each: deepfactor_process_s (also cli_s) is ``deepfactor backtest --data F --config ... --out DIR``;
vectorbt_process_s is this script with ``--vectorbt-only F``, which imports vectorbt, loads the
same file (with deepfactor's file loader, so both read identical closes), runs the same job and
writes its equity curve, and imports nothing else of deepfactor. numba's on-disk cache is warm
for it (filled by this script's own vectorbt runs first): a first-ever start also pays
vectorbt_warmup_s. The synthetic panel goes to both as a long OHLCV Parquet file.

After timing, one untimed run of each tool is compared in detail: decision dates, the assets
held after each rebalance, the number of orders and fills, per-fill quantities, and the equity
path, with the first point where they diverge. Results go to benchmarks/results/backtest.json.

    python benchmarks/backtest_vs_vectorbt.py [--repeat 3] [--no-cli] [--numba-cache]
        [--equities FILE] [--crypto FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import structlog  # noqa: E402

# vectorbt compiles its numba kernels on first use and caches them on disk (cache=True), so a
# second run of this script would time a cache load, not a compile. Unless --numba-cache is
# given, numba gets a fresh private cache so vectorbt_warmup_s is always the cold compile.
_PRIVATE_NUMBA_CACHE = None
if "--numba-cache" not in sys.argv and "NUMBA_CACHE_DIR" not in os.environ:
    _PRIVATE_NUMBA_CACHE = tempfile.mkdtemp(prefix="df-bench-numba-")
    os.environ["NUMBA_CACHE_DIR"] = _PRIVATE_NUMBA_CACHE

import vectorbt as vbt  # noqa: E402

# Only the file loader of deepfactor is imported here: the --vectorbt-only process (timed as a
# whole) must not pay for deepfactor's services. Those are imported where they are used.
from engine.data import SAMPLE_PATH, Panel, load_panel, synthetic_panel  # noqa: E402

if TYPE_CHECKING:
    from engine.events import Fill, TargetPortfolio

CONFIG = ROOT / "deploy" / "configs" / "peer-momentum.toml"
RESULTS = ROOT / "benchmarks" / "results" / "backtest.json"
SHARED_DATA = ROOT.parent / "shared" / "data"  # beside the checkout, when there is one
EQUITIES = SHARED_DATA / "equities" / "pypfopt_cookbook_stock_prices_1990-2024.csv.gz"
CRYPTO = SHARED_DATA / "crypto" / "cdd_binance_usdt_spot_1d_2017-2026.csv.gz"
CLI = Path(sys.executable).with_name("deepfactor")
TARGETS = {"equity_rel_diff_max": 0.001, "time_ratio_max": 2}
DAY = np.timedelta64(1, "D")


# -- the job, vectorbt side ------------------------------------------------------------------
def decision_rows(bar_open: np.ndarray) -> np.ndarray:
    """Rows of the last bar of each calendar month whose fire time (00:00 UTC on day 1 of the
    next month) is at or before the last bar's close."""
    month = bar_open.astype("datetime64[M]")
    rows = np.append(np.flatnonzero(month[1:] != month[:-1]), len(bar_open) - 1)
    fire = (month[rows] + 1).astype("datetime64[ms]")
    last_close = bar_open[-1].astype("datetime64[ms]") + DAY
    return rows[fire <= last_close]


def momentum_weights(
    close: np.ndarray,
    rows: np.ndarray,
    lookback: int = 252,
    skip: int = 21,
    fraction: float = 0.25,
    gross: float = 1.0,
) -> np.ndarray:
    """Target weights at ``rows``, shaped (len(rows), N): equal weights on the top ``fraction``
    (rounded down) of the assets with a finite 12-1 momentum and a close at the decision bar."""
    weights = np.zeros((len(rows), close.shape[1]))
    for k, d in enumerate(rows):
        if d < lookback:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            signal = close[d - skip] / close[d - lookback] - 1.0
        valid = np.flatnonzero(np.isfinite(signal) & np.isfinite(close[d]))
        count = int(math.floor(fraction * valid.size))
        if count == 0:
            continue
        chosen = valid[np.argsort(-signal[valid], kind="stable")[:count]]
        weights[k, chosen] = gross / count
    return weights


def size_frame(close: pd.DataFrame, bar_open: np.ndarray) -> pd.DataFrame:
    """vectorbt's ``size``: target percents on decision rows, NaN elsewhere and where close
    is NaN."""
    values = close.to_numpy()
    rows = decision_rows(bar_open)
    size = np.full(values.shape, np.nan)
    size[rows] = momentum_weights(values, rows)
    size[np.isnan(values)] = np.nan
    return pd.DataFrame(size, index=close.index, columns=close.columns)


def close_frame(panel: Panel) -> pd.DataFrame:
    return pd.DataFrame(
        panel.close, index=pd.DatetimeIndex(panel.bar_open), columns=list(panel.symbols)
    )


def vectorbt_portfolio(close: pd.DataFrame, size: pd.DataFrame) -> Any:
    return vbt.Portfolio.from_orders(
        close,
        size=size,
        size_type="targetpercent",
        fees=0.001,
        init_cash=1e6,
        cash_sharing=True,
        group_by=True,
        call_seq="auto",
        freq="1D",
    )


def run_vectorbt(close: pd.DataFrame, bar_open: np.ndarray) -> tuple[float, float, Any]:
    """Return (seconds to build the weights, final equity, portfolio); the caller times it all."""
    started = time.perf_counter()
    size = size_frame(close, bar_open)
    signal_s = time.perf_counter() - started
    portfolio = vectorbt_portfolio(close, size)
    return signal_s, float(portfolio.value().iloc[-1]), portfolio


def vectorbt_warmup() -> float:
    """Compile vectorbt's numba kernels on a small slice; return the seconds it took."""
    panel = synthetic_panel(10, 400, seed=1)
    close = close_frame(panel)
    started = time.perf_counter()
    run_vectorbt(close, panel.bar_open)[2].orders.count()
    return time.perf_counter() - started


def vectorbt_job(data: Path, out_dir: Path | None = None) -> dict[str, Any]:
    """The whole job as a vectorbt user runs it: load ``data``, run, write the equity curve.

    This is what the ``--vectorbt-only`` process does; that process is timed from the outside.
    """
    panel = load_panel(data)
    close = close_frame(panel)
    _, final_equity, portfolio = run_vectorbt(close, panel.bar_open)
    if out_dir is not None:
        portfolio.value().rename("equity").rename_axis("timestamp").to_csv(out_dir / "equity.csv")
    return {"final_equity": final_equity, "orders": int(portfolio.orders.count())}


# -- deepfactor side -------------------------------------------------------------------------
def silence_logs() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def timed(function, *args) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def tapped_bus_class() -> Any:
    """The backtest's in-memory bus, keeping the targets and fills it carries (diagnostics only)."""
    from engine.bus import MemoryBus
    from engine.events import Fill, TargetPortfolio

    class TappedBus(MemoryBus):
        last: TappedBus | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.targets: list[TargetPortfolio] = []
            self.fills: list[Fill] = []
            TappedBus.last = self

        def _keep(self, event: Any) -> None:
            payload = getattr(event, "payload", None)
            if isinstance(payload, TargetPortfolio):
                self.targets.append(payload)
            elif isinstance(payload, Fill):
                self.fills.append(payload)

        def publish(self, topic, event):  # type: ignore[no-untyped-def]
            self._keep(event)
            return super().publish(topic, event)

        def publish_many(self, topic, events):  # type: ignore[no-untyped-def]
            for event in events:
                self._keep(event)
            return super().publish_many(topic, events)

    return TappedBus


def deepfactor_trace(config: Any, panel: Panel, out_dir: Path) -> dict[str, Any]:
    """One untimed deepfactor run that keeps its targets, fills and equity curve."""
    import services.commands.backtest as backtest_module

    bus_class = tapped_bus_class()
    with mock.patch.object(backtest_module, "MemoryBus", bus_class):
        summary = backtest_module.run_backtest(config, panel, out_dir)
    bus = bus_class.last
    assert bus is not None
    equity = pd.read_csv(out_dir / "equity.csv")
    return {"summary": summary, "targets": bus.targets, "fills": bus.fills, "equity": equity}


# -- comparison ------------------------------------------------------------------------------
def _iso(value: Any) -> str:
    return pd.Timestamp(value).strftime("%Y-%m-%d")


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b else abs(a - b)


def compare(panel: Panel, trace: dict[str, Any], portfolio: Any) -> dict[str, Any]:
    """Decision dates, holdings, orders and equity paths side by side; first divergences."""
    symbols = list(panel.symbols)
    out: dict[str, Any] = {}

    # Decision bars: deepfactor's TargetPortfolio.asof is the decision bar's close time.
    df_targets = {
        pd.Timestamp(t.asof).tz_convert(None) - pd.Timedelta(days=1): t for t in trace["targets"]
    }
    rows = decision_rows(panel.bar_open)
    vbt_dates = [pd.Timestamp(panel.bar_open[d]) for d in rows]
    vbt_weights = momentum_weights(panel.close, rows)
    df_dates = sorted(df_targets)
    out["decision_bars"] = {
        "deepfactor": len(df_dates),
        "vectorbt": len(vbt_dates),
        "first": _iso(vbt_dates[0]) if vbt_dates else None,
        "last": _iso(vbt_dates[-1]) if vbt_dates else None,
    }
    only_df = sorted(set(df_dates) - set(vbt_dates))
    only_vbt = sorted(set(vbt_dates) - set(df_dates))
    out["decision_bars"]["equal"] = not only_df and not only_vbt
    if only_df or only_vbt:
        out["decision_bars"]["only_deepfactor"] = [_iso(d) for d in only_df[:10]]
        out["decision_bars"]["only_vectorbt"] = [_iso(d) for d in only_vbt[:10]]

    # Holdings chosen at each decision (deepfactor may name symbols in first-seen order).
    mismatches = []
    holding_rebalances = 0
    for date, weights in zip(vbt_dates, vbt_weights):
        chosen_vbt = {symbols[j] for j in np.flatnonzero(weights > 0)}
        holding_rebalances += bool(chosen_vbt)
        target = df_targets.get(date)
        chosen_df = (
            {s for s, w in zip(target.symbols, target.weights) if w > 0} if target else set()
        )
        if chosen_df != chosen_vbt:
            mismatches.append(
                {
                    "date": _iso(date),
                    "only_deepfactor": sorted(chosen_df - chosen_vbt),
                    "only_vectorbt": sorted(chosen_vbt - chosen_df),
                }
            )
    out["holdings"] = {
        "rebalances_holding_assets": holding_rebalances,
        "decisions_differing": len(mismatches),
        "first_differences": mismatches[:5],
    }

    # Orders: deepfactor fills vs vectorbt order records, matched by (decision bar, symbol).
    records = portfolio.orders.values
    vbt_fills = {
        (pd.Timestamp(panel.bar_open[r["idx"]]), symbols[r["col"]]): (
            float(r["size"]) * (1 if r["side"] == 0 else -1),
            float(r["fees"]),
        )
        for r in records
    }
    df_fills: dict[tuple[pd.Timestamp, str], tuple[float, float]] = {}
    for fill in trace["fills"]:
        key = (pd.Timestamp(fill.executed_at).tz_convert(None) - pd.Timedelta(days=1), fill.symbol)
        quantity, fee = df_fills.get(key, (0.0, 0.0))
        signed = fill.quantity if fill.side == "buy" else -fill.quantity
        df_fills[key] = (quantity + signed, fee + fill.fee)
    keys = sorted(set(df_fills) | set(vbt_fills))
    first_missing = next((k for k in keys if (k in df_fills) != (k in vbt_fills)), None)
    worst = max(
        (
            (rel(df_fills[k][0], vbt_fills[k][0]), k)
            for k in keys
            if k in df_fills and k in vbt_fills
        ),
        default=(0.0, None),
    )
    first_quantity = next(
        (
            k
            for k in keys
            if k in df_fills and k in vbt_fills and rel(df_fills[k][0], vbt_fills[k][0]) > 1e-6
        ),
        None,
    )
    out["orders"] = {
        "deepfactor_orders": trace["summary"]["orders"],
        "deepfactor_fills": len(trace["fills"]),
        "vectorbt_orders": len(records),
        "only_deepfactor": sum(1 for k in keys if k in df_fills and k not in vbt_fills),
        "only_vectorbt": sum(1 for k in keys if k in vbt_fills and k not in df_fills),
        "first_unmatched": None
        if first_missing is None
        else {
            "date": _iso(first_missing[0]),
            "symbol": first_missing[1],
            "deepfactor": df_fills.get(first_missing),
            "vectorbt": vbt_fills.get(first_missing),
        },
        "quantity_max_rel_diff": worst[0],
        "first_quantity_diff_over_1e-6": None
        if first_quantity is None
        else {
            "date": _iso(first_quantity[0]),
            "symbol": first_quantity[1],
            "deepfactor_qty": df_fills[first_quantity][0],
            "vectorbt_qty": vbt_fills[first_quantity][0],
        },
        "deepfactor_fees": trace["summary"]["fees"],
        "vectorbt_fees": float(records["fees"].sum()),
    }

    # Execution order inside each rebalance. Both tools sell first, then buy from the smallest
    # order value, and cut the last buy to the cash left: when buys tie on value (every new
    # entry targets the same w * equity), which one comes last, and is cut, is a tie-break.
    # vectorbt's order records are in execution order; so are deepfactor's fills.
    df_sequence: dict[pd.Timestamp, list[Fill]] = {}
    for fill in trace["fills"]:
        date = pd.Timestamp(fill.executed_at).tz_convert(None) - pd.Timedelta(days=1)
        df_sequence.setdefault(date, []).append(fill)
    vbt_sequence: dict[pd.Timestamp, list[Any]] = {}
    for record in np.sort(records, order="id"):
        vbt_sequence.setdefault(pd.Timestamp(panel.bar_open[record["idx"]]), []).append(record)
    differing = []
    for date in sorted(set(df_sequence) & set(vbt_sequence)):
        df_buys = [f for f in df_sequence[date] if f.side == "buy"]
        vbt_buys = [r for r in vbt_sequence[date] if r["side"] == 0]
        if df_buys and vbt_buys and df_buys[-1].symbol != symbols[vbt_buys[-1]["col"]]:
            differing.append(
                {
                    "date": _iso(date),
                    "deepfactor_last_buy": df_buys[-1].symbol,
                    "deepfactor_last_buy_value": df_buys[-1].quantity * df_buys[-1].price,
                    "vectorbt_last_buy": symbols[vbt_buys[-1]["col"]],
                    "vectorbt_last_buy_value": float(vbt_buys[-1]["size"] * vbt_buys[-1]["price"]),
                }
            )
    out["execution_order"] = {
        "rebalances_with_trades": len(set(df_sequence) | set(vbt_sequence)),
        "rebalances_where_last_buy_differs": len(differing),
        "first_differences": differing[:3],
    }

    # Replay vectorbt in deepfactor's execution order (call_seq from deepfactor's fills): if
    # the only difference is the tie-break, the two runs then agree to float noise.
    n_rows, n_cols = panel.close.shape
    call_seq = np.tile(np.arange(n_cols), (n_rows, 1))
    column = {s: j for j, s in enumerate(symbols)}
    index = pd.DatetimeIndex(panel.bar_open)
    for date, fills in df_sequence.items():
        first = list(dict.fromkeys(column[f.symbol] for f in fills))
        chosen = set(first)
        call_seq[index.get_loc(date)] = first + [j for j in range(n_cols) if j not in chosen]
    close = close_frame(panel)
    replay = vbt.Portfolio.from_orders(
        close,
        size=size_frame(close, panel.bar_open),
        size_type="targetpercent",
        fees=0.001,
        init_cash=1e6,
        cash_sharing=True,
        group_by=True,
        call_seq=call_seq,
        freq="1D",
    )
    replay_value = replay.value()
    final = float(replay_value.iloc[-1])
    df_path = trace["equity"]["equity"].to_numpy()
    path = (
        np.abs(replay_value.to_numpy() - df_path) / replay_value.to_numpy()
        if len(df_path) == len(replay_value)
        else None
    )
    out["vectorbt_in_deepfactor_order"] = {
        "final_equity": final,
        "rel_diff_to_deepfactor": rel(trace["summary"]["final_equity"], final),
        "equity_path_max_rel_diff": None if path is None else float(path.max()),
    }

    # Equity path: deepfactor's curve is stamped with bar close times, vectorbt's with bar opens.
    df_equity = trace["equity"]
    df_curve = pd.Series(
        df_equity["equity"].to_numpy(),
        index=pd.to_datetime(df_equity["timestamp"], utc=True).dt.tz_convert(None)
        - pd.Timedelta(days=1),
    )
    vbt_curve = portfolio.value()
    both = pd.concat({"deepfactor": df_curve, "vectorbt": vbt_curve}, axis=1, join="inner")
    diff = (both["deepfactor"] - both["vectorbt"]).abs() / both["vectorbt"].abs()
    first = diff.index[diff.to_numpy() > 1e-6]
    out["equity_path"] = {
        "points_compared": len(both),
        "points_deepfactor": len(df_curve),
        "points_vectorbt": len(vbt_curve),
        "max_rel_diff": float(diff.max()) if len(diff) else None,
        "max_rel_diff_at": _iso(diff.idxmax()) if len(diff) else None,
        "first_rel_diff_over_1e-6": None
        if not len(first)
        else {
            "date": _iso(first[0]),
            "deepfactor": float(both.loc[first[0], "deepfactor"]),
            "vectorbt": float(both.loc[first[0], "vectorbt"]),
        },
    }
    return out


# -- whole processes -------------------------------------------------------------------------
def write_long_file(panel: Panel, path: Path) -> Path:
    """Write ``panel`` as a long OHLCV Parquet file that ``deepfactor backtest --data`` reads
    back."""
    t, n = panel.close.shape
    frame = pd.DataFrame(
        {
            "timestamp": pd.DatetimeIndex(np.repeat(panel.bar_open, n)).tz_localize("UTC"),
            "symbol": np.tile(np.array(panel.symbols, dtype=object), t),
            "open": panel.open.ravel(),
            "high": panel.high.ravel(),
            "low": panel.low.ravel(),
            "close": panel.close.ravel(),
            "volume": panel.volume.ravel() if panel.volume is not None else np.nan,
        }
    )
    frame.to_parquet(path, index=False)
    return path


def process_commands(data: Path, out_dir: Path) -> dict[str, list[str]]:
    """The two whole-process runs on ``data``: deepfactor's CLI and a fresh vectorbt process."""
    return {
        "deepfactor": [
            str(CLI),
            "backtest",
            "--data",
            str(data),
            "--config",
            str(CONFIG),
            "--out",
            str(out_dir / "deepfactor"),
        ],
        "vectorbt": [
            sys.executable,
            str(Path(__file__).resolve()),
            "--vectorbt-only",
            str(data),
            "--out",
            str(out_dir / "vectorbt"),
            "--numba-cache",  # numba's cache as this process has it (NUMBA_CACHE_DIR inherited)
        ],
    }


def _final_equity(tool: str, out_dir: Path, stdout: str) -> float | None:
    if tool == "deepfactor":
        summary = out_dir / "deepfactor" / "summary.json"
        return json.loads(summary.read_text()).get("final_equity") if summary.exists() else None
    lines = stdout.strip().splitlines()
    return json.loads(lines[-1]).get("final_equity") if lines else None


def time_processes(data: Path, repeat: int) -> dict[str, Any]:
    """Best whole-process wall times of both tools on ``data``, interleaved (None if one fails).

    Each run is a fresh interpreter: imports, data loading, the backtest and writing its
    results are all in the time. numba's on-disk cache is inherited (NUMBA_CACHE_DIR), warm.
    """
    times: dict[str, list[float]] = {"deepfactor": [], "vectorbt": []}
    finals: dict[str, float | None] = {"deepfactor": None, "vectorbt": None}
    errors: dict[str, str] = {}
    if not CLI.exists():
        errors["deepfactor"] = f"{CLI.name} not found beside {Path(sys.executable).name}"
    for _ in range(repeat):
        for tool in times:
            if tool in errors:
                continue
            out_dir = Path(tempfile.mkdtemp(prefix="df-bench-process-"))
            (out_dir / tool).mkdir()
            try:
                started = time.perf_counter()
                process = subprocess.run(
                    process_commands(data, out_dir)[tool],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                elapsed = time.perf_counter() - started
                if process.returncode != 0:
                    output = (process.stderr or process.stdout).strip()
                    errors[tool] = f"exit {process.returncode}: {output[-300:]}"
                    continue
                times[tool].append(elapsed)
                finals[tool] = _final_equity(tool, out_dir, process.stdout)
            except (OSError, subprocess.SubprocessError, ValueError) as failure:
                errors[tool] = str(failure)
            finally:
                shutil.rmtree(out_dir, ignore_errors=True)
    best = {
        tool: None if tool in errors or not runs else round(min(runs), 4)
        for tool, runs in times.items()
    }
    result: dict[str, Any] = {
        "cli_s": best["deepfactor"],
        "cli_final_equity": finals["deepfactor"],
        "deepfactor_process_s": best["deepfactor"],
        "vectorbt_process_s": best["vectorbt"],
        "process_ratio": None
        if best["deepfactor"] is None or best["vectorbt"] is None
        else round(best["deepfactor"] / best["vectorbt"], 3),
        "vectorbt_process_final_equity": finals["vectorbt"],
        "deepfactor_process_all_s": [round(t, 4) for t in times["deepfactor"]],
        "vectorbt_process_all_s": [round(t, 4) for t in times["vectorbt"]],
    }
    if "deepfactor" in errors:
        result["cli_error"] = errors["deepfactor"]
    if "vectorbt" in errors:
        result["vectorbt_process_error"] = errors["vectorbt"]
    return result


# -- main ------------------------------------------------------------------------------------
def shown(path: Path) -> str:
    """``path`` relative to the repository root when it is inside the checkout or beside it
    (never an absolute machine path); otherwise only its file name."""
    resolved = path.resolve()
    if resolved.is_relative_to(ROOT) or resolved.is_relative_to(ROOT.parent):
        return Path(os.path.relpath(resolved, ROOT)).as_posix()
    return path.name


def default_data(preferred: Path, fallback: Path | None) -> Path | None:
    return preferred if preferred.is_file() else fallback


def bench_dataset(
    name: str,
    panel: Panel,
    data_file: Path | None,
    config: Any,
    repeat: int,
    workdir: Path,
    cli: bool = True,
) -> dict[str, Any]:
    from services.commands.backtest import run_backtest

    close = close_frame(panel)
    df_times, vbt_times, signal_times = [], [], []
    summary: dict[str, Any] = {}
    vbt_equity = math.nan
    for _ in range(repeat):  # interleaved, so load drift hits both tools alike
        seconds, summary = timed(run_backtest, config, panel)
        df_times.append(seconds)
        seconds, (signal_s, vbt_equity, _) = timed(run_vectorbt, close, panel.bar_open)
        vbt_times.append(seconds)
        signal_times.append(signal_s)
    deepfactor_s, vectorbt_s = min(df_times), min(vbt_times)
    d, v = summary["final_equity"], vbt_equity

    trace = deepfactor_trace(config, panel, workdir / f"{name}-deepfactor")
    portfolio = run_vectorbt(close, panel.bar_open)[2]
    checks = compare(panel, trace, portfolio)

    result: dict[str, Any] = {
        "data_file": None if data_file is None else shown(data_file),
        "bars": panel.n_bars,
        "assets": len(panel.symbols),
        "deepfactor_s": round(deepfactor_s, 4),
        "vectorbt_s": round(vectorbt_s, 4),
        "time_ratio": round(deepfactor_s / vectorbt_s, 3),
        "deepfactor_final_equity": d,
        "vectorbt_final_equity": v,
        "equity_rel_diff": abs(d - v) / v,
        "vectorbt_signal_s": round(min(signal_times), 4),
        "rebalances": checks["decision_bars"]["deepfactor"],
        "rebalances_holding_assets": checks["holdings"]["rebalances_holding_assets"],
        "deepfactor_orders": summary["orders"],
        "vectorbt_orders": checks["orders"]["vectorbt_orders"],
        "deepfactor_all_s": [round(t, 4) for t in df_times],
        "vectorbt_all_s": [round(t, 4) for t in vbt_times],
    }
    if not cli:
        result.update(cli_s=None, deepfactor_process_s=None, vectorbt_process_s=None)
    else:
        if data_file is None:
            data_file = write_long_file(panel, workdir / f"{name}.parquet")
            result["cli_data"] = "the same panel written as long OHLCV Parquet"
        result.update(time_processes(data_file, repeat))
    result["comparison"] = checks
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing; the best is kept")
    parser.add_argument(
        "--no-cli",
        action="store_true",
        help="skip the whole-process timings (deepfactor's CLI and a fresh vectorbt process)",
    )
    parser.add_argument(
        "--numba-cache",
        action="store_true",
        help="reuse numba's on-disk cache (vectorbt_warmup_s then times a cache load)",
    )
    parser.add_argument(
        "--equities",
        type=Path,
        metavar="FILE",
        default=default_data(EQUITIES, SAMPLE_PATH),
        help="US stocks, wide daily closes (default: ../shared/data/equities/"
        f"{EQUITIES.name} beside the checkout, else the bundled {shown(SAMPLE_PATH)})",
    )
    parser.add_argument(
        "--crypto",
        type=Path,
        metavar="FILE",
        default=default_data(CRYPTO, None),
        help=f"Binance USDT pairs, long daily OHLCV (default: ../shared/data/crypto/{CRYPTO.name}"
        " beside the checkout; skipped when it is not there)",
    )
    parser.add_argument(
        "--vectorbt-only",
        type=Path,
        metavar="FILE",
        help="run only vectorbt's job on FILE, print its result as JSON (the process timed as "
        "vectorbt_process_s)",
    )
    parser.add_argument("--out", type=Path, help="with --vectorbt-only: write equity.csv here")
    arguments = parser.parse_args()
    try:
        if arguments.vectorbt_only is not None:
            silence_logs()
            print(json.dumps(vectorbt_job(arguments.vectorbt_only, arguments.out)))
        else:
            run(arguments)
    finally:
        if _PRIVATE_NUMBA_CACHE:
            shutil.rmtree(_PRIVATE_NUMBA_CACHE, ignore_errors=True)


def run(arguments: argparse.Namespace) -> None:
    from engine.config import load_config

    silence_logs()
    config = load_config(CONFIG, environ={})
    warmup_s = vectorbt_warmup()
    datasets: dict[str, tuple[Panel, Path | None]] = {
        "synthetic_500x2520": (synthetic_panel(500, 2520, seed=7), None),
    }
    skipped: dict[str, str] = {}
    print("synthetic: seeded 500 x 2,520 panel (written as Parquet for the process runs)")
    equities = load_panel(arguments.equities)
    datasets[f"equities_{len(equities.symbols)}x{equities.n_bars}"] = (
        equities,
        arguments.equities,
    )
    print(f"equities: {shown(arguments.equities)}")
    if arguments.crypto is None:
        skipped["crypto"] = (
            f"../shared/data/crypto/{CRYPTO.name} not found beside the checkout and no "
            "crypto file ships with the repository; pass --crypto FILE (deepfactor data fetch "
            "writes one)"
        )
        print(f"crypto: skipped ({skipped['crypto']})")
    else:
        crypto = load_panel(arguments.crypto)  # late listings: assets join over the years
        datasets[f"crypto_{len(crypto.symbols)}x{crypto.n_bars}"] = (crypto, arguments.crypto)
        print(f"crypto: {shown(arguments.crypto)}")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="df-bench-") as workdir:
        for name, (panel, data_file) in datasets.items():
            results[name] = bench_dataset(
                name,
                panel,
                data_file,
                config,
                arguments.repeat,
                Path(workdir),
                cli=not arguments.no_cli,
            )
            results[name]["vectorbt_warmup_s"] = round(warmup_s, 3)
            results[name]["deepfactor_us_per_bar"] = round(
                results[name]["deepfactor_s"] / panel.n_bars * 1e6, 1
            )

    document = {
        "datasets": results,
        "data_files": {name: results[name]["data_file"] for name in results},
        "skipped": skipped,
        "job": "deploy/configs/peer-momentum.toml",
        "timing": (
            f"best of {arguments.repeat}; imports and data loading excluded (cli_s includes them)"
        ),
        "process_timing": (
            f"best of {arguments.repeat}, the two tools interleaved, each a fresh interpreter "
            "timed as a whole (imports, loading the data file, the backtest, writing the equity "
            "curve): deepfactor_process_s (= cli_s) is `deepfactor backtest --data F --config "
            "deploy/configs/peer-momentum.toml --out DIR`; vectorbt_process_s is "
            "`python benchmarks/backtest_vs_vectorbt.py --vectorbt-only F --out DIR` (vectorbt, "
            "deepfactor's file loader, no other deepfactor import), numba's on-disk cache warm"
        ),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, python {platform.python_version()}",
        "vectorbt_version": vbt.__version__,
        "vectorbt_warmup": (
            "numba compile, fresh cache"
            if _PRIVATE_NUMBA_CACHE
            else "numba on-disk cache reused (a compile only if it was empty)"
        ),
        "versions": {
            "numpy": np.__version__,
            "pandas": pd.__version__,
            "numba": __import__("numba").__version__,
        },
        "targets": TARGETS,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2, default=str) + "\n")

    columns = (
        "deepfactor_s",
        "vectorbt_s",
        "time_ratio",
        "vectorbt_signal_s",
        "cli_s",
        "vectorbt_process_s",
        "process_ratio",
        "deepfactor_us_per_bar",
        "deepfactor_final_equity",
        "vectorbt_final_equity",
        "cli_final_equity",
        "vectorbt_process_final_equity",
        "equity_rel_diff",
        "rebalances",
        "deepfactor_orders",
        "vectorbt_orders",
    )
    width = max(len(n) for n in results) + 2
    print(f"{'':26s}" + "".join(f"{n:>{width}s}" for n in results))
    for column in columns:
        cells = []
        for figures in results.values():
            value = figures.get(column)
            if value is None:
                cells.append("null")
            elif isinstance(value, float) and column.endswith("equity"):
                cells.append(f"{value:,.2f}")
            elif isinstance(value, float) and column == "equity_rel_diff":
                cells.append(f"{value:.3e}")
            else:
                cells.append(str(value))
        print(f"{column:26s}" + "".join(f"{c:>{width}s}" for c in cells))
    print(f"vectorbt warm-up on a 10x400 slice ({document['vectorbt_warmup']}): {warmup_s:.2f} s")
    for name, figures in results.items():
        ok_equity = figures["equity_rel_diff"] <= TARGETS["equity_rel_diff_max"]
        ok_time = figures["time_ratio"] <= TARGETS["time_ratio_max"]
        path = figures["comparison"]["equity_path"]
        print(
            f"{name}: equity_rel_diff <= {TARGETS['equity_rel_diff_max']} -> "
            f"{'met' if ok_equity else 'MISSED'}; time_ratio <= {TARGETS['time_ratio_max']} -> "
            f"{'met' if ok_time else 'MISSED'}; equity path max rel diff "
            f"{path['max_rel_diff']:.2e} (first > 1e-6: {path['first_rel_diff_over_1e-6']})"
        )
    print(f"wrote {shown(RESULTS)}")


if __name__ == "__main__":
    main()
