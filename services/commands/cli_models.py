"""The commands over data and models: ``backtest``, ``train``, ``retrain``, ``factors report``,
``data fetch`` and ``replay``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from services.commands.cli_common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    STRATEGIES,
    load_and_log,
    on_stop_signals,
    paper_panel,
    print_summary,
    restore_signals,
    usage_error,
    with_model,
)


def cmd_backtest(arguments: argparse.Namespace) -> int:
    from engine.data.sources import FileSource
    from engine.errors import ConfigError, DataError, UsageError
    from services.commands.preflight import check_output_dir
    from strategies.models import ModelError

    if arguments.strategy is not None and arguments.strategy not in STRATEGIES:
        return usage_error(
            f"--strategy must be one of {list(STRATEGIES)}, received {arguments.strategy!r}"
        )
    try:
        check_output_dir(Path(arguments.out))
        config = load_and_log(arguments, "backtest")
        from services.runtime.assembly import check_universe

        config = with_model(config, arguments.strategy, arguments.registry)
        panel = FileSource(Path(arguments.data)).panel()
        check_universe(config, panel.symbols, f"--data {arguments.data}")
        from services.commands.backtest import run_backtest

        summary = run_backtest(config, panel, Path(arguments.out))
    except (ConfigError, DataError, UsageError, ModelError) as error:
        return usage_error(str(error))
    print_summary("backtest", summary, Path(arguments.out))
    return EXIT_OK


def cmd_evaluate(arguments: argparse.Namespace) -> int:
    from engine.errors import ConfigError, DataError, UsageError
    from services.commands.preflight import check_output_dir
    from strategies.models import ModelError

    try:
        options = _evaluate_options(arguments)
        out_dir = Path(arguments.out)
        check_output_dir(out_dir)
        config = load_and_log(arguments, "evaluate")
        panel, known = _evaluate_panel(arguments, out_dir)
        from services.runtime.assembly import check_universe

        check_universe(config, panel.symbols, arguments.data or "--synthetic-regimes")
        from services.commands.evaluate import run_evaluation

        run_evaluation(config, panel, out_dir, options, known)
    except (ConfigError, DataError, UsageError, ModelError) as error:
        return usage_error(str(error))
    except KeyboardInterrupt:
        print("evaluate: interrupted before the results were written", file=sys.stderr)
        return EXIT_INTERRUPTED
    print((out_dir / "table.md").read_text())
    print(
        f"written to {out_dir}: results.json, table.md, curves.csv, equity.png, drawdown.png, "
        "regimes.png"
    )
    return EXIT_OK


def _evaluate_options(arguments: argparse.Namespace):  # -> EvaluateOptions
    from engine.errors import UsageError
    from services.commands.evaluate import BY_KEY, EvaluateOptions

    if (arguments.data is None) == (not arguments.synthetic_regimes):
        raise UsageError("give one of --data FILE or --synthetic-regimes")
    if arguments.seeds < 1 or arguments.jobs < 1:
        raise UsageError(
            f"--seeds and --jobs must be >= 1, received {arguments.seeds} and {arguments.jobs}"
        )
    if arguments.ray_address and arguments.executor != "ray":
        raise UsageError("--ray-address goes with --executor ray")
    strategies = tuple(BY_KEY)
    if arguments.strategies:
        strategies = tuple(s.strip() for s in arguments.strategies.split(",") if s.strip())
        unknown = [s for s in strategies if s not in BY_KEY]
        if unknown:
            raise UsageError(f"--strategies: unknown {unknown}; known: {list(BY_KEY)}")
        if "lstm" not in strategies or not any(BY_KEY[s].classical for s in strategies):
            raise UsageError(
                "--strategies must hold lstm and at least one classical baseline "
                "(equal-weight, trailing-ic, ridge): the verdict compares them"
            )
        strategies = tuple(k for k in BY_KEY if k in strategies)  # the table's order
    return EvaluateOptions(
        seeds=arguments.seeds,
        jobs=arguments.jobs,
        executor=arguments.executor,
        ray_address=arguments.ray_address,
        device=arguments.device,
        strategies=strategies,
        progress=not arguments.no_progress,
    )


def _evaluate_panel(arguments: argparse.Namespace, out_dir: Path):  # -> (Panel, KnownRegimes)
    from services.commands.evaluate import KnownRegimes

    if arguments.data is not None:
        from engine.data.sources import FileSource

        panel = FileSource(Path(arguments.data)).panel()
        if arguments.regimes is None:
            return panel, None
        return panel, KnownRegimes(
            _read_regimes(Path(arguments.regimes)), "given by the user", arguments.regimes
        )
    from engine.data.regime_market import regime_panel, write_regime_market

    if arguments.regimes is not None:
        from engine.errors import UsageError

        raise UsageError("--regimes goes with --data: --synthetic-regimes knows its own")
    market = regime_panel()
    out_dir.mkdir(parents=True, exist_ok=True)
    data_file, _ = write_regime_market(market, out_dir / "market.csv.gz")
    return market.panel, KnownRegimes(market.regimes, market.rule, data_file.name)


def _read_regimes(path: Path):  # -> pandas.Series
    from engine.data.regime_market import REGIMES, load_regimes
    from engine.errors import DataError

    try:
        labels = load_regimes(path)
    except (OSError, KeyError, ValueError) as error:
        raise DataError(
            f"--regimes {path}: cannot read a timestamp,regime table ({error})"
        ) from error
    if labels.isna().any():
        raise DataError(
            f"--regimes {path}: regimes must be one of {list(REGIMES)} on every row "
            f"({int(labels.isna().sum())} rows are not)"
        )
    return labels


def cmd_train(arguments: argparse.Namespace) -> int:
    from engine.errors import ConfigError, DataError, UsageError
    from services.commands.preflight import check_output_dir
    from strategies.models import ModelError

    try:
        out_dir = Path(arguments.out)
        check_output_dir(out_dir)
        config = with_model(load_and_log(arguments, "train"), None, arguments.registry)
        if arguments.bars is None:
            arguments.bars = 0  # all of it: the paper's default window is not a training set
        panel = paper_panel(arguments, config)
        from services.commands.train import print_report, run_train

        baselines = tuple(b.strip() for b in arguments.baselines.split(",") if b.strip())
        result = run_train(
            config,
            panel,
            out_dir,
            kind=arguments.model,
            device=arguments.device,
            baselines=baselines,
            progress=not arguments.no_progress,
        )
    except (ConfigError, DataError, UsageError, ModelError) as error:
        return usage_error(str(error))
    print_report(result, out_dir)
    return EXIT_OK


def cmd_retrain(arguments: argparse.Namespace) -> int:
    import os

    from engine.errors import BusError, ConfigError, DataError, UsageError
    from engine.scheduling import build_trigger
    from strategies.models import ModelError

    try:
        if arguments.redis_url:
            os.environ["DEEPFACTOR_BUS__REDIS_URL"] = arguments.redis_url
        config = with_model(load_and_log(arguments, "retrain"), None, arguments.registry)
        if arguments.bars is None:
            arguments.bars = 0
        trigger = None
        if not arguments.once:
            trigger = build_trigger(
                arguments.cron, arguments.interval, owner="retrain --cron/--interval"
            )
        out_dir = Path(arguments.out) if arguments.out else None
        if out_dir is not None and not config.bus.redis_url:
            raise UsageError(
                "--out: publishing a reload to the account needs its Redis (--redis-url or "
                "[bus] redis_url)"
            )
        paper_panel(arguments, config)  # the data must load now, not at the first fire
    except (ConfigError, DataError, UsageError) as error:
        return usage_error(str(error))
    from services.commands.retrain import (
        account_namespace,
        publish_reload,
        retrain_once,
        run_worker,
    )

    def job() -> None:
        outcome = retrain_once(
            config, paper_panel(arguments, config), arguments.model, arguments.device
        )
        if outcome.verdict.challenger_wins and out_dir is not None:
            namespace = account_namespace(out_dir)
            if namespace is None:
                print(f"retrain: no paper account in {out_dir}: no reload sent", file=sys.stderr)
                return
            publish_reload(config, namespace, outcome.version)
        print(
            f"retrain: {outcome.version} "
            f"({'active' if outcome.verdict.challenger_wins else 'not activated'}: "
            f"{outcome.verdict.reason}; validation IC {outcome.verdict.challenger_ic:+.4f} vs "
            f"{outcome.verdict.active_ic:+.4f})",
            flush=True,
        )

    if arguments.once:
        try:
            job()
        except (DataError, ModelError, BusError) as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    stop = threading.Event()

    previous = on_stop_signals(stop)
    try:
        run_worker(trigger, job, stop)
    finally:
        restore_signals(previous)
    return EXIT_OK


def cmd_factors_report(arguments: argparse.Namespace) -> int:
    from engine.data import load_panel
    from engine.errors import ConfigError, DataError, UsageError
    from engine.logging import configure_logging
    from services.commands.preflight import check_output_dir

    if arguments.horizon < 1:
        return usage_error(
            f"--horizon must be a positive number of bars, received {arguments.horizon}"
        )
    if arguments.quantiles < 2:
        return usage_error(f"--quantiles must be >= 2, received {arguments.quantiles}")
    configure_logging("factors", "info", "auto")
    try:
        check_output_dir(Path(arguments.out))
        panel = load_panel(arguments.data)
        from services.commands.factor_report import run_factor_report

        run_factor_report(panel, Path(arguments.out), arguments.horizon, arguments.quantiles)
    except (ConfigError, DataError, UsageError, ValueError) as error:
        return usage_error(str(error))
    return EXIT_OK


def cmd_data_fetch(arguments: argparse.Namespace) -> int:
    from engine.errors import DataError, UsageError
    from engine.logging import configure_logging
    from services.commands.preflight import check_output_file

    configure_logging("data-fetch", "info", "auto")
    symbols = [s.strip() for s in arguments.symbols.split(",") if s.strip()]
    if not symbols:
        return usage_error("--symbols must list at least one symbol, e.g. BTC/USDT,ETH/USDT")
    try:
        check_output_file(Path(arguments.out))
    except UsageError as error:
        return usage_error(str(error))
    try:
        from services.commands.data_fetch import fetch_to_file

        summary = fetch_to_file(
            arguments.exchange,
            symbols,
            arguments.timeframe,
            arguments.since,
            Path(arguments.out),
            until=arguments.until,
        )
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(summary, indent=2, default=str))
    return EXIT_OK


def cmd_replay(arguments: argparse.Namespace) -> int:
    from engine.errors import ConfigError, DataError, UsageError
    from engine.logging import configure_logging
    from services.runtime.loop import HandlerFailedError

    configure_logging("replay", "info", "auto")  # until the run's own config is read
    try:
        from services.commands.replay import load_recorded_run, replay

        recorded = load_recorded_run(Path(arguments.run_dir))
    except (ConfigError, DataError, UsageError) as error:
        return usage_error(str(error))
    # The services' info lines repeat the recorded run's own log: the report is the output.
    level = "debug" if recorded.config.log.level == "debug" else "warning"
    configure_logging("replay", level, recorded.config.log.format)
    try:
        report = replay(recorded)
    except (ConfigError, HandlerFailedError) as error:
        print(f"error: the replay of {arguments.run_dir} failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(report.to_dict(), indent=2) if arguments.json else report.text())
    return EXIT_OK if report.identical else EXIT_FAILED
