"""What the command handlers share: exit codes, config loading and validation, the
replay panels, the printed summary, and stopping on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

EXIT_OK = 0
EXIT_FAILED = 1  # the run started and failed
EXIT_USAGE = 2  # bad arguments, config or data: nothing was started
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout closed it

STRATEGIES = ("equal-weight", "trailing-ic", "lstm", "asset-lstm", "ridge")


def usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def validated_config(arguments: argparse.Namespace):  # -> Config
    # The schema, then every check start-up makes against the libraries (factor names and
    # parameters, the schedule, neutralisers, factor files), all naming the file.
    from engine.config import load_config
    from engine.errors import ConfigError
    from services.runtime.assembly import validate

    config = load_config(arguments.config)
    try:
        validate(config)
    except ConfigError as error:
        if arguments.config is None:
            raise
        raise ConfigError(f"config {arguments.config}: {error}") from None
    return config


def load_and_log(arguments: argparse.Namespace, service: str):  # -> Config
    from engine.logging import configure_logging

    config = validated_config(arguments)
    configure_logging(service, config.log.level, config.log.format)
    return config


def configure_command_logging(command: str, config) -> None:
    # An operator's command logs to stderr like a service (redacted, with its name); reading
    # commands (status, tail) print their answer on stdout and log warnings and worse only.
    from engine.logging import configure_logging

    level = config.log.level
    if command in ("status", "tail") and level in ("debug", "info"):
        level = "warning"
    configure_logging(command, level, config.log.format)


def print_summary(title: str, summary: dict, out_dir: Path) -> None:
    rows = [
        ("bars", f"{summary['bars']}"),
        ("period", f"{summary['start']} .. {summary['end']}"),
        ("final equity", f"{summary['final_equity']:,.2f}"),
        ("total return", f"{summary['total_return']:+.2%}"),
        ("max drawdown", f"{summary['max_drawdown']:.2%}"),
        ("sharpe", f"{summary['sharpe']:.2f}"),
        ("VaR 95 / 99", f"{summary['var_95']:.2%} / {summary['var_99']:.2%}"),
        ("orders / fills", f"{summary['orders']} / {summary['fills']}"),
        ("fees", f"{summary['fees']:,.2f}"),
    ]
    outcomes = summary.get("order_outcomes")
    if outcomes:
        ended = ", ".join(f"{status} {count}" for status, count in outcomes.items())
        rows.append(("orders ended", f"{ended}; {summary.get('partial_fills', 0)} part-filled"))
    limits = summary.get("risk_limits")
    if limits is not None:
        stop = limits["drawdown_stop"]
        acted = summary.get("limits_acted") or {}
        rows += [
            (
                "risk limits",
                "off"
                if not limits["enabled"]
                else f"drawdown stop {stop:.0%}, {limits['var_method']} VaR "
                f"{limits['var_confidence']:.0%} limit {limits['var_limit']:.2%}",
            ),
            ("limits acted", ", ".join(f"{k} x{n}" for k, n in acted.items()) or "none"),
        ]
    rows.append(("written to", str(out_dir)))
    print(title)
    for name, value in rows:
        print(f"  {name:<15} {value}")


def with_model(config, strategy: str | None, registry: str | None):  # -> Config
    # --strategy and --registry override [strategy] name and [model] registry.
    import msgspec

    if strategy is not None:
        config = msgspec.structs.replace(
            config, strategy=msgspec.structs.replace(config.strategy, name=strategy)
        )
    if registry is not None:
        config = msgspec.structs.replace(
            config, model=msgspec.structs.replace(config.model, registry=registry)
        )
    return config


def paper_panel(arguments: argparse.Namespace, config, bars: int | None = None):  # -> Panel
    from engine.data import SAMPLE_PATH
    from engine.data.sources import BarSource, FileSource, SyntheticSource
    from engine.errors import UsageError

    if bars is None:
        bars = config.paper.bars if arguments.bars is None else arguments.bars
    if bars < 0:
        raise UsageError(f"--bars must be a number of bars >= 0 (0: all), received {bars}")
    source: BarSource
    if arguments.synthetic:
        market = config.market
        source = SyntheticSource(
            market.symbols,
            bars or 250,
            seed=market.seed,
            start=market.start,
            timeframe=market.timeframe.upper(),
        )
    else:
        source = FileSource(Path(arguments.data) if arguments.data else SAMPLE_PATH)
    panel = source.panel()
    return panel.slice(0, bars) if bars and bars < panel.n_bars else panel


def replay_panels(arguments: argparse.Namespace, config):  # -> (history, replay)
    # The replay of `paper` and `run market-data`: [paper] bars from [paper] start; the bars
    # before the start are the history a model may be trained on.
    from engine.errors import UsageError
    from services.runtime.assembly import replay_start

    start = replay_start(config)
    if start is None:
        panel = paper_panel(arguments, config)
        return panel.slice(0, 0), panel
    bars = config.paper.bars if arguments.bars is None else arguments.bars
    full = paper_panel(arguments, config, bars=0)
    first = int(full.bar_open.searchsorted(start))
    if first >= full.n_bars:
        raise UsageError(
            f"[paper] start {config.paper.start}: {full.source} ends before it "
            f"(last bar {str(full.bar_open[-1])[:19]})"
        )
    stop = first + bars if bars else full.n_bars
    return full.slice(0, first), full.slice(first, min(stop, full.n_bars))


def parse_speed(text: str | None, default: float) -> float:
    # 0 and "max" both mean no cap, as in [paper] speed.
    from engine.errors import UsageError

    if text is None:
        return default
    if text == "max":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0 or math.isinf(value):
        raise UsageError(
            f"--speed must be bars per second >= 0, or 'max' (0 and max: no cap), received {text!r}"
        )
    return value


def cold_stop() -> NoReturn:
    """What a second SIGTERM or SIGINT does to a run: stop now (exit 130)."""
    raise KeyboardInterrupt


def on_stop_signals(
    stop: threading.Event, second: Callable[[], object] | None = None
) -> dict[int, Any]:
    """Let SIGTERM and SIGINT set ``stop``, and a second one call ``second`` (``cold_stop``,
    or hurrying a supervisor); return the handlers they replace, for ``restore_signals``."""

    def on_signal(number: int, frame: FrameType | None) -> None:
        if stop.is_set() and second is not None:
            second()
        stop.set()

    return {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}


def restore_signals(previous: dict[int, Any]) -> None:
    for number, handler in previous.items():
        signal.signal(number, handler)
