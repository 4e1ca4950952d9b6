"""What ``deepfactor report`` draws, read from a run directory into tidy pandas frames.

Every run directory holds the recorder's ``summary.json`` and ``equity.csv``. The rest comes
from the run's events. A paper run keeps them all in ``events.jsonl`` (the archive service). An
account run as processes (``deepfactor up``, ``run SERVICE``) has no event log: its events are
read from the account's streams in Redis (``account_events``: plain XRANGE, no consumer group,
so a report never holds back a running account). A backtest keeps no event log: its bars and
per-bar signals would be as large as its data file.
It writes instead the few frames a report needs (``write_backtest_frames``): ``signals.csv``
(each Signal's model and factor weights), ``risk.csv`` (each PortfolioSnapshot's VaR figures and
flags), ``fills.csv`` and ``benchmark.csv`` (the equal-weight universe), with ``config.json``.
A backtest directory written before those files existed still loads; what it lacks is None.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.bus import Bus, RedisBus, keys, stream_id_order
from engine.config import Config, RiskConfig
from engine.data import Panel
from engine.errors import DataError, EventDecodeError, UsageError
from engine.events import BarBlock, BarSet, Envelope, Fill, PortfolioSnapshot, Signal
from engine.events.codec import decode
from services.daemons.archive import EVENT_LOG, read_event_log
from services.daemons.recorder import EQUITY_COLUMNS
from services.runtime.account import ACCOUNT_FILE
from services.runtime.run_dir import CONFIG_FILE, resolved_config_text

SUMMARY_FILE = "summary.json"
EQUITY_FILE = "equity.csv"
SIGNALS_FILE = "signals.csv"
RISK_FILE = "risk.csv"
FILLS_FILE = "fills.csv"
BENCHMARK_FILE = "benchmark.csv"
# signals.csv: these columns, then one column of weights per factor (0: not used).
SIGNAL_COLUMNS = ("timestamp", "model", "fallback")
RISK_COLUMNS = ("realised_var", "expected_var", "drawdown_stopped", "halted")
FILL_COLUMNS = ("fill_id", "symbol", "side", "quantity", "price", "fee")
_BACKTEST_TOPICS = (Signal.TOPIC, PortfolioSnapshot.TOPIC, Fill.TOPIC)
_ACCOUNT_TOPICS = (*_BACKTEST_TOPICS, BarSet.TOPIC)
_PAGE = 10_000


@dataclass(frozen=True)
class RunFrames:
    """A run's events as frames indexed by UTC time (sorted; one row per bar where noted).

    ``weights``: per Signal, the weight of each factor (0 where the signal did not use it);
    ``signals``: its ``model`` and ``fallback``; ``risk``: per bar, the last snapshot's
    ``RISK_COLUMNS``; ``fills``: per fill (by ``fill_id``, once), at the bar it was made on;
    ``closes``: bar close time x symbol, NaN where a symbol had no bar.
    """

    weights: pd.DataFrame
    signals: pd.DataFrame
    risk: pd.DataFrame
    fills: pd.DataFrame
    closes: pd.DataFrame


@dataclass(frozen=True)
class RiskSettings:
    """The run's ``[risk]`` keys a report reads: the stop it draws and the VaR it checks."""

    enabled: bool
    drawdown_stop: float
    var_confidence: float
    var_horizon: int
    var_window: int


@dataclass(frozen=True)
class RunRecord:
    """One run directory, loaded. A frame is None when the directory does not record it."""

    run_dir: Path
    kind: str  # "paper" (an event log) or "backtest"
    summary: dict[str, Any]
    risk_settings: RiskSettings
    equity: pd.DataFrame  # EQUITY_COLUMNS but timestamp, indexed by bar close time
    benchmark: pd.Series | None
    weights: pd.DataFrame | None
    signals: pd.DataFrame | None
    risk: pd.DataFrame | None
    fills: pd.DataFrame | None

    @property
    def initial_equity(self) -> float:
        return float(self.summary["initial_equity"])

    @property
    def periods_per_year(self) -> float:
        return float(self.summary["periods_per_year"])


def _time_index(values: Iterable[Any]) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(list(values), utc=True), name="timestamp")


def _frame(rows: list[dict[str, Any]], times: list[Any], columns: Iterable[str]) -> pd.DataFrame:
    # One row per time, the last one winning (a snapshot after the fills of its bar, a signal
    # published again after a restart), sorted by time.
    frame = pd.DataFrame(rows, index=_time_index(times), columns=list(columns))
    return frame[~frame.index.duplicated(keep="last")].sort_index()


def frames_from_events(events: Iterable[Envelope]) -> RunFrames:
    """Collect the signals, snapshots, fills and bars of ``events`` (in log order) as frames."""
    signal_times: list[Any] = []
    signal_rows: list[dict[str, Any]] = []
    weight_rows: list[dict[str, float]] = []
    risk_times: list[Any] = []
    risk_rows: list[dict[str, Any]] = []
    fills: dict[str, tuple[Any, dict[str, Any]]] = {}
    closes: dict[Any, dict[str, float]] = {}
    for event in events:
        payload = event.payload
        if isinstance(payload, Signal):
            signal_times.append(payload.asof)
            signal_rows.append({"model": payload.model, "fallback": payload.fallback})
            weight_rows.append(dict(payload.factor_weights))
        elif isinstance(payload, PortfolioSnapshot):
            risk_times.append(payload.asof)
            risk_rows.append({name: getattr(payload, name) for name in RISK_COLUMNS})
        elif isinstance(payload, Fill):
            # A fill published again after a crash has a new event id but its own fill_id.
            # The event's time is the close of the bar it was made on (executed_at: its open).
            row = {name: getattr(payload, name) for name in FILL_COLUMNS}
            fills.setdefault(payload.fill_id, (event.ts, row))
        elif isinstance(payload, BarSet):
            closes.setdefault(payload.close_time, {}).update(zip(payload.symbols, payload.close))
        elif isinstance(payload, BarBlock):
            matrix = payload.matrix("close")
            assert matrix is not None  # every block has closes
            for time, row in zip(payload.close_times(), matrix):
                closes.setdefault(time, {}).update(zip(payload.symbols, row.tolist()))
    weights = pd.DataFrame(weight_rows, index=_time_index(signal_times), dtype=float)
    weights = weights.fillna(0.0)[~weights.index.duplicated(keep="last")].sort_index()
    close_frame = pd.DataFrame.from_dict(closes, orient="index", dtype=float)
    close_frame.index = _time_index(close_frame.index)
    return RunFrames(
        weights=weights,
        signals=_frame(signal_rows, signal_times, SIGNAL_COLUMNS[1:]),
        risk=_frame(risk_rows, risk_times, RISK_COLUMNS).astype(
            {"realised_var": float, "expected_var": float}
        ),
        fills=pd.DataFrame(
            [row for _, row in fills.values()],
            index=_time_index(time for time, _ in fills.values()),
            columns=list(FILL_COLUMNS),
        ).sort_index(kind="stable"),
        closes=close_frame.sort_index(),
    )


def equal_weight_curve(closes: pd.DataFrame, initial_equity: float) -> pd.Series:
    """Equity of the equal-weight universe, from ``initial_equity`` at the first bar.

    Each bar adds the mean return of the assets priced on both bars, compounded: the index the
    drawdown stop's re-entry filter reads (``PriceWindow.market_index``), so the page shows the
    market that rule saw.
    """
    moves = closes.pct_change(fill_method=None).mean(axis=1, skipna=True).fillna(0.0)
    curve = initial_equity * (1.0 + moves).cumprod()
    return curve.rename("equal_weight")


def bus_events(bus: Bus, topics: Iterable[str]) -> list[Envelope]:
    """Every event published on ``topics`` so far, through a consumer group of its own."""
    consumer = bus.consumer("report", "report-0", tuple(topics))
    events: list[Envelope] = []
    while deliveries := consumer.read(10_000):
        events.extend(d.event for d in deliveries if d.event is not None)
        consumer.ack(deliveries)
    return events


def stream_events(bus: RedisBus, topics: Iterable[str]) -> list[Envelope]:
    """Every event still on the account's ``topics``, in stream order, read with XRANGE: no
    consumer group is made, so nothing of a running account is taken or waited for. An
    entry that does not decode is left out (``deepfactor tail`` shows it)."""
    entries: list[tuple[tuple[int, int], Envelope]] = []
    for topic in topics:
        key = keys.stream(bus.namespace, topic)
        start = "-"
        while True:
            page = bus.call(
                "xrange", lambda k=key, s=start: bus.redis.xrange(k, min=s, count=_PAGE)
            )
            for message_id, fields in page:
                try:
                    event = decode(fields.get(b"event", b""))
                except EventDecodeError:
                    continue
                entries.append((stream_id_order(message_id.decode()), event))
            if len(page) < _PAGE:
                break
            start = "(" + page[-1][0].decode()
    entries.sort(key=lambda entry: entry[0])
    return [event for _, event in entries]


def account_events(run_dir: Path) -> list[Envelope]:
    """The report's events of the paper account in ``run_dir``, from its Redis: the URL of
    the environment, else the run directory's private server (started for the read if no
    run serves it, like ``deepfactor halt``)."""
    from engine.config import load_config
    from services.commands.operator import account_bus

    with account_bus(load_config(None), run_dir, start_server=True) as bus:
        return stream_events(bus, _ACCOUNT_TOPICS)


def write_backtest_frames(out_dir: Path, bus: Bus, panel: Panel, config: Config) -> None:
    """Write what a report of this backtest needs beside its summary (module docstring).

    ``bus`` is the backtest's in-memory bus after the run; ``config`` the run's ``Config``.
    """
    frames = frames_from_events(bus_events(bus, _BACKTEST_TOPICS))
    closes = pd.DataFrame(panel.close, index=_time_index(panel.close_time), columns=panel.symbols)
    written = {
        SIGNALS_FILE: frames.signals.join(frames.weights),
        RISK_FILE: frames.risk,
        FILLS_FILE: frames.fills,
        BENCHMARK_FILE: equal_weight_curve(closes, config.portfolio.initial_cash).to_frame(),
    }
    for name, frame in written.items():
        # Times as equity.csv writes them (ISO 8601 with the T).
        frame.set_axis(frame.index.map(pd.Timestamp.isoformat), axis=0).to_csv(
            out_dir / name, index_label="timestamp"
        )
    (out_dir / CONFIG_FILE).write_text(resolved_config_text(config))


def _read_csv(path: Path, required: Iterable[str], text: Iterable[str] = ()) -> pd.DataFrame | None:
    # A frame indexed by its timestamp column, every column but `text` numbers (or booleans);
    # None when the file is absent.
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
        missing = [c for c in ("timestamp", *required) if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: no column {', '.join(missing)}")
        frame.index = _time_index(frame.pop("timestamp"))
    except (ValueError, pd.errors.ParserError) as error:
        raise DataError(f"{path}: cannot be read as a table ({error})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None
    for column in frame.columns.difference(list(text)):
        try:
            frame[column] = pd.to_numeric(frame[column])
        except (ValueError, TypeError) as error:
            raise DataError(f"{path}: column {column}: not a number ({error})") from None
    return frame.sort_index()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        tree = json.loads(path.read_text())
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None
    except ValueError as error:
        raise DataError(f"{path}: not JSON ({error})") from None
    if not isinstance(tree, dict):
        raise DataError(f"{path}: expected a JSON object, received {type(tree).__name__}")
    return tree


def _risk_settings(run_dir: Path, summary: dict[str, Any]) -> RiskSettings:
    # config.json's [risk] when the run wrote one; else the limits summary.json restates,
    # with the defaults for what it leaves out.
    defaults = RiskConfig()
    config_path = run_dir / CONFIG_FILE
    risk: Any = summary.get("risk_limits")
    if config_path.is_file():
        risk = _read_json(config_path).get("risk")
    risk = risk if isinstance(risk, dict) else {}

    def pick(name: str, kind: type) -> Any:
        value = risk.get(name, getattr(defaults, name))
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise DataError(
                f"{config_path if config_path.is_file() else run_dir / SUMMARY_FILE}: "
                f"[risk] {name} must be a {kind.__name__}, received {value!r}"
            ) from None

    return RiskSettings(
        enabled=pick("enabled", bool),
        drawdown_stop=pick("drawdown_stop", float),
        var_confidence=pick("var_confidence", float),
        var_horizon=pick("var_horizon", int),
        var_window=pick("var_window", int),
    )


def _load_equity(path: Path) -> pd.DataFrame:
    equity = _read_csv(path, EQUITY_COLUMNS[1:])
    assert equity is not None  # the caller checked that the file exists
    if equity.empty:
        raise DataError(f"{path}: no rows (the run recorded no bar)")
    values = equity.loc[:, list(EQUITY_COLUMNS[1:])]
    if not np.isfinite(values.to_numpy(dtype=float)).all():
        raise DataError(f"{path}: a value is missing or not a number")
    return values.astype(float)


def load_run(run_dir: str | Path) -> RunRecord:
    """Read a backtest's ``--out`` or a paper run's directory.

    Raises
    ------
    UsageError
        ``run_dir`` is not a directory, or lacks ``summary.json`` or ``equity.csv``.
    DataError
        A file cannot be read or is malformed; the message names it (and the line of an
        event log).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"--run {run_dir}: not a directory")
    for name in (SUMMARY_FILE, EQUITY_FILE):
        if not (run_dir / name).is_file():
            raise UsageError(
                f"--run {run_dir}: no {name} (not a run directory: a backtest's --out or a "
                "paper run's directory)"
            )
    summary = _read_json(run_dir / SUMMARY_FILE)
    for key in ("initial_equity", "periods_per_year"):
        if not isinstance(summary.get(key), int | float) or isinstance(summary.get(key), bool):
            raise DataError(f"{run_dir / SUMMARY_FILE}: no number {key!r}")
    equity = _load_equity(run_dir / EQUITY_FILE)
    settings = _risk_settings(run_dir, summary)
    log_path = run_dir / EVENT_LOG
    frames = None
    if log_path.is_file():
        try:
            frames = frames_from_events(read_event_log(log_path))
        except OSError as error:
            raise DataError(f"{log_path}: cannot be read ({error.strerror or error})") from None
    elif (run_dir / ACCOUNT_FILE).is_file():
        frames = frames_from_events(account_events(run_dir))
    if frames is not None:
        if summary.get("model") is None and not frames.signals.empty:
            summary = {**summary, "model": str(frames.signals["model"].iloc[-1])}
        benchmark = None
        if not frames.closes.empty:
            benchmark = equal_weight_curve(frames.closes, float(summary["initial_equity"]))
        return RunRecord(
            run_dir=run_dir,
            kind="paper",
            summary=summary,
            risk_settings=settings,
            equity=equity,
            benchmark=benchmark,
            weights=frames.weights,
            signals=frames.signals,
            risk=frames.risk,
            fills=frames.fills,
        )
    signals = _read_csv(run_dir / SIGNALS_FILE, SIGNAL_COLUMNS[1:], text=("model",))
    weights = None
    if signals is not None:
        weights = signals.drop(columns=list(SIGNAL_COLUMNS[1:])).astype(float).fillna(0.0)
        signals = signals.loc[:, list(SIGNAL_COLUMNS[1:])].astype({"fallback": bool})
    benchmark = _read_csv(run_dir / BENCHMARK_FILE, ("equal_weight",))
    return RunRecord(
        run_dir=run_dir,
        kind="backtest",
        summary=summary,
        risk_settings=settings,
        equity=equity,
        benchmark=None if benchmark is None else benchmark["equal_weight"].astype(float),
        weights=weights,
        signals=signals,
        risk=_read_csv(run_dir / RISK_FILE, RISK_COLUMNS),
        fills=_read_csv(run_dir / FILLS_FILE, FILL_COLUMNS, text=("fill_id", "symbol", "side")),
    )
