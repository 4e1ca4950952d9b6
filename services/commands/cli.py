"""``deepfactor`` command line: parse, load config, call into services, return an exit code.

Heavy libraries (numpy, pandas, torch) are imported inside the commands that use them, so
start-up stays fast and ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

EXIT_OK = 0
EXIT_FAILED = 1  # the run started and failed
EXIT_USAGE = 2  # bad arguments, config or data: nothing was started
EXIT_INTERRUPTED = 130

STRATEGIES = ("equal-weight", "trailing-ic", "lstm", "asset-lstm", "ridge")


def _version() -> str:
    from engine.version import package_version

    return package_version()


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _validated_config(arguments: argparse.Namespace):  # -> Config
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


def _load(arguments: argparse.Namespace, service: str):  # -> Config
    from engine.logging import configure_logging

    config = _validated_config(arguments)
    configure_logging(service, config.log.level, config.log.format)
    return config


def _config_check(arguments: argparse.Namespace) -> int:
    import msgspec

    from engine.errors import ConfigError
    from engine.logging import redact_secrets

    try:
        config = _validated_config(arguments)
    except ConfigError as error:
        return _error(str(error))
    shown = redact_secrets(None, "info", msgspec.to_builtins(config))
    print(msgspec.json.format(msgspec.json.encode(shown), indent=2).decode())
    return EXIT_OK


def _configure_command_logging(command: str, config) -> None:
    # An operator's command logs to stderr like a service (redacted, with its name); reading
    # commands (status, tail) print their answer on stdout and log warnings and worse only.
    from engine.logging import configure_logging

    level = config.log.level
    if command in ("status", "tail") and level in ("debug", "info"):
        level = "warning"
    configure_logging(command, level, config.log.format)


def _operator(arguments: argparse.Namespace) -> int:
    import json

    import msgspec

    from engine.errors import BusError, ConfigError, UsageError
    from services.commands.operator import account_bus, set_kill_switch

    try:
        config = _validated_config(arguments)
        _configure_command_logging(arguments.command_name, config)
        if arguments.redis_url:
            config = msgspec.structs.replace(
                config, bus=msgspec.structs.replace(config.bus, redis_url=arguments.redis_url)
            )
        out_dir = Path(arguments.out or config.run.run_dir)
        reading = arguments.command_name == "status"
        with account_bus(config, out_dir, start_server=not reading) as bus:
            if reading:
                from services.commands.replay import load_run_config
                from services.commands.status import account_status
                from services.runtime.run_dir import CONFIG_FILE

                # The limits the daemons run with: the account's own config when it has one.
                account_config = out_dir / CONFIG_FILE
                if account_config.exists():
                    config = load_run_config(account_config)
                status = account_status(bus, config)
            else:
                halt = arguments.command_name == "halt"
                flag = set_kill_switch(
                    bus,
                    halt=halt,
                    flatten=halt and arguments.flatten,
                    reason=arguments.reason or "operator",
                )
    except (ConfigError, UsageError, BusError) as error:
        return _error(str(error))
    if arguments.command_name == "halt":
        print(
            f"halted {out_dir} since {flag['since']}"
            + (": closing every position" if flag["flatten"] else "")
        )
    elif arguments.command_name == "resume":
        print(f"resumed {out_dir}: the kill switch is off")
    elif arguments.json:
        print(json.dumps(status, indent=2))
    else:
        from services.commands.status import render_status

        print(render_status(status, str(out_dir)))
    if arguments.command_name == "status" and arguments.service:
        states = [r["state"] for r in status["services"] if r["service"] == arguments.service]
        if "alive" not in states:
            seen = ", ".join(states) or "no heartbeat"
            print(f"error: service {arguments.service} is not alive ({seen})", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


def _print_summary(title: str, summary: dict, out_dir: Path) -> None:
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


def _backtest(arguments: argparse.Namespace) -> int:
    from engine.data.sources import FileSource
    from engine.errors import ConfigError, DataError, UsageError
    from services.commands.preflight import check_output_dir

    if arguments.strategy is not None and arguments.strategy not in STRATEGIES:
        return _error(
            f"--strategy must be one of {list(STRATEGIES)}, received {arguments.strategy!r}"
        )
    try:
        check_output_dir(Path(arguments.out))
        config = _load(arguments, "backtest")
        from services.runtime.assembly import check_universe

        config = _with_model(config, arguments.strategy, arguments.registry)
        panel = FileSource(Path(arguments.data)).panel()
        check_universe(config, panel.symbols, f"--data {arguments.data}")
        from services.commands.backtest import run_backtest

        summary = run_backtest(config, panel, Path(arguments.out))
    except (ConfigError, DataError, UsageError) as error:
        return _error(str(error))
    _print_summary("backtest", summary, Path(arguments.out))
    return EXIT_OK


def _with_model(config, strategy: str | None, registry: str | None):  # -> Config
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


def _train(arguments: argparse.Namespace) -> int:
    from engine.errors import ConfigError, DataError, UsageError
    from services.commands.preflight import check_output_dir
    from strategies.models import ModelError

    try:
        out_dir = Path(arguments.out)
        check_output_dir(out_dir)
        config = _with_model(_load(arguments, "train"), None, arguments.registry)
        if arguments.bars is None:
            arguments.bars = 0  # all of it: the paper's default window is not a training set
        panel = _paper_panel(arguments, config)
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
        return _error(str(error))
    print_report(result, out_dir)
    return EXIT_OK


def _retrain(arguments: argparse.Namespace) -> int:
    import os

    from engine.errors import BusError, ConfigError, DataError, UsageError
    from engine.scheduling import build_trigger
    from strategies.models import ModelError

    try:
        if arguments.redis_url:
            os.environ["DEEPFACTOR_BUS__REDIS_URL"] = arguments.redis_url
        config = _with_model(_load(arguments, "retrain"), None, arguments.registry)
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
        _paper_panel(arguments, config)  # the data must load now, not at the first fire
    except (ConfigError, DataError, UsageError) as error:
        return _error(str(error))
    from services.commands.retrain import (
        account_namespace,
        publish_reload,
        retrain_once,
        run_worker,
    )

    def job() -> None:
        outcome = retrain_once(
            config, _paper_panel(arguments, config), arguments.model, arguments.device
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

    def on_signal(number: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        run_worker(trigger, job, stop)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return EXIT_OK


def _paper_panel(arguments: argparse.Namespace, config, bars: int | None = None):  # -> Panel
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


def _replay_panels(arguments: argparse.Namespace, config):  # -> (history, replay)
    # The replay of `paper` and `run market-data`: [paper] bars from [paper] start; the bars
    # before the start are the history a model may be trained on.
    from engine.errors import UsageError
    from services.runtime.assembly import replay_start

    start = replay_start(config)
    if start is None:
        panel = _paper_panel(arguments, config)
        return panel.slice(0, 0), panel
    bars = config.paper.bars if arguments.bars is None else arguments.bars
    full = _paper_panel(arguments, config, bars=0)
    first = int(full.bar_open.searchsorted(start))
    if first >= full.n_bars:
        raise UsageError(
            f"[paper] start {config.paper.start}: {full.source} ends before it "
            f"(last bar {str(full.bar_open[-1])[:19]})"
        )
    stop = first + bars if bars else full.n_bars
    return full.slice(0, first), full.slice(first, min(stop, full.n_bars))


def _parse_speed(text: str | None, default: float) -> float:
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


def _paper(arguments: argparse.Namespace) -> int:
    import os

    from engine.errors import BusError, ConfigError, DataError, UsageError
    from services.commands.preflight import check_output_dir
    from services.runtime.run_dir import RunDirectory

    symbols = [s.strip() for s in (arguments.symbols or "").split(",") if s.strip()]
    run_dir = None
    try:
        if arguments.redis_url:
            os.environ["DEEPFACTOR_BUS__REDIS_URL"] = arguments.redis_url
        if arguments.warmup_bars < 0:
            raise UsageError(f"--warmup-bars must be >= 0, received {arguments.warmup_bars}")
        if arguments.exchange and not symbols:
            raise UsageError("--exchange needs --symbols, e.g. --symbols BTC/USDT,ETH/USDT")
        if arguments.live and not arguments.exchange:
            raise UsageError(
                "--live trades on live candles: it needs --exchange and --symbols (a replayed "
                "file is history, never traded with real money)"
            )
        config = _load(arguments, "paper")
        if config.broker.kind != "simulated" and not arguments.exchange:
            raise UsageError(
                f"[broker] kind = {config.broker.kind!r} trades on an exchange now: it needs "
                "live candles (--exchange ID --symbols A/B,...); a replay trades on the "
                "simulated broker"
            )
        from services.runtime.assembly import check_universe, make_broker

        make_broker(config, live=arguments.live)  # the venue's settings and keys, at once

        speed = _parse_speed(arguments.speed, config.paper.speed)
        out_dir = Path(arguments.out or config.run.run_dir)
        out_option = "--out" if arguments.out else "[run] run_dir"
        check_output_dir(out_dir, out_option)
        # The run owns its directory from here to exit, before any data is read or its
        # embedded Redis starts: a second run on it is refused with one line naming the
        # holder. The kernel drops the lock if this process dies.
        run_dir = RunDirectory(out_dir, option=out_option).acquire()
        if arguments.exchange:
            panel = None
            check_universe(config, symbols, "--symbols")
        else:
            history, panel = _replay_panels(arguments, config)
            where = f"--data {arguments.data}" if arguments.data else "the data"
            check_universe(config, panel.symbols, where)
    except (ConfigError, DataError, UsageError) as error:
        if run_dir is not None:  # refused before it started: leave the directory as found
            run_dir.release(discard=True)
        return _error(str(error))
    stop = threading.Event()
    source = None
    if arguments.exchange:
        from engine.data.ccxt_source import CcxtOhlcvSource

        try:
            source = CcxtOhlcvSource(arguments.exchange, symbols, arguments.timeframe)
        except DataError as error:
            run_dir.release(discard=True)
            print(f"error: {error}", file=sys.stderr)
            return EXIT_FAILED
    try:
        from services.runtime.account import open_account
        from services.runtime.paper import live_feed, replay_feed

        account = open_account(
            out_dir,
            config.run.namespace,
            live_feed(source) if source is not None else replay_feed(panel),
            fresh=arguments.fresh,
            option=out_option,
        )
        run_dir.write_config(config)  # config.json: what `config check` prints
    except UsageError as error:
        run_dir.release(discard=True)
        return _error(str(error))

    def on_signal(number: int, frame: FrameType | None) -> None:
        if stop.is_set():  # second signal: cold stop
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        from services.runtime.paper import run_live_paper, run_paper

        if source is not None:
            run = run_live_paper(
                config,
                source,
                out_dir,
                warmup_bars=arguments.warmup_bars,
                stop=stop,
                account=account,
                live=arguments.live,
            )
        else:
            from services.commands.model_start import ensure_model

            ensure_model(config, history)
            run = run_paper(config, panel, out_dir, speed=speed, stop=stop, account=account)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (ConfigError, DataError) as error:
        return _error(str(error))
    except BusError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        run_dir.release()
    title = "paper" + (" (stopped early)" if run.interrupted else "")
    if run.restarts:
        title += f" (account continued; {run.restarts} restart(s))"
    _print_summary(title, run.summary, out_dir)
    return EXIT_OK


def _run_service(arguments: argparse.Namespace) -> int:
    # One service of a paper account as its own process (services/runtime/standalone.py, feed.py).
    import os

    from engine.errors import BusError, ConfigError, DataError, UsageError
    from engine.logging import configure_logging
    from services.commands.preflight import check_output_dir
    from services.runtime.loop import StateError
    from services.runtime.standalone import StartTimeoutError

    service = arguments.service
    try:
        if arguments.redis_url:
            os.environ["DEEPFACTOR_BUS__REDIS_URL"] = arguments.redis_url
        if arguments.instance is not None:
            os.environ["DEEPFACTOR_RUN__INSTANCE"] = arguments.instance
        replay_only = [
            option
            for option, value in (
                ("--data", arguments.data),
                ("--synthetic", arguments.synthetic or None),
                ("--bars", arguments.bars),
                ("--speed", arguments.speed),
                ("--fresh", arguments.fresh or None),
            )
            if value is not None
        ]
        if service != "market-data" and replay_only:
            raise UsageError(
                f"{', '.join(replay_only)}: options of `run market-data` (the replay), not of "
                f"`run {service}`"
            )
        if not arguments.wait > 0 or math.isinf(arguments.wait):
            raise UsageError(f"--wait must be seconds > 0, received {arguments.wait}")
        config = _validated_config(arguments)
        # A service process is a daemon: JSON lines unless the config asks for the console.
        log_format = "json" if config.log.format == "auto" else config.log.format
        configure_logging(service, config.log.level, log_format)
        if service in ("execution", "rebalance") and config.broker.kind != "simulated":
            raise UsageError(
                f"[broker] kind = {config.broker.kind!r}: `run` processes trade the replay of "
                "`run market-data`, recorded bars an exchange never saw; trade on an exchange "
                "with `deepfactor paper --exchange ID --symbols A/B,...` (live candles; "
                "--live for real money)"
            )
        if not config.bus.redis_url:
            raise UsageError(
                f"run {service} needs a Redis every process of the account can reach: set "
                "[bus] redis_url or --redis-url (the private embedded server belongs to one "
                "process; `deepfactor paper` runs every service in one)"
            )
        out_dir = Path(arguments.out or config.run.run_dir)
        out_option = "--out" if arguments.out else "[run] run_dir"
        check_output_dir(out_dir, out_option)
        if service == "market-data":
            from services.runtime.assembly import check_universe

            speed = _parse_speed(arguments.speed, config.paper.speed)
            _, panel = _replay_panels(arguments, config)
            where = f"--data {arguments.data}" if arguments.data else "the data"
            check_universe(config, panel.symbols, where)
    except (ConfigError, DataError, UsageError) as error:
        return _error(str(error))
    stop = threading.Event()

    def on_signal(number: int, frame: FrameType | None) -> None:
        if stop.is_set():  # second signal: cold stop
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if service == "market-data":
            from services.runtime.feed import run_market_data

            run_market_data(
                config,
                panel,
                out_dir,
                speed=speed,
                stop=stop,
                wait_s=arguments.wait,
                option=out_option,
                fresh=arguments.fresh,
            )
        else:
            from services.runtime.standalone import run_service

            run_service(
                config, service, out_dir, stop=stop, wait_s=arguments.wait, option=out_option
            )
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (ConfigError, DataError, UsageError) as error:
        return _error(str(error))
    except (BusError, StartTimeoutError, StateError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return EXIT_OK


def _up(arguments: argparse.Namespace) -> int:
    # Every service as its own `deepfactor run` child, supervised (services/runtime/supervisor.py).
    import os

    from engine.bus.embedded import EmbeddedRedis
    from engine.errors import BusError, ConfigError, DataError, UsageError
    from engine.logging import configure_logging
    from services.commands.preflight import check_output_dir
    from services.runtime.supervisor import Supervisor, SupervisorLock, run_commands

    try:
        if arguments.redis_url:
            os.environ["DEEPFACTOR_BUS__REDIS_URL"] = arguments.redis_url
        if not arguments.wait > 0 or math.isinf(arguments.wait):
            raise UsageError(f"--wait must be seconds > 0, received {arguments.wait}")
        config = _validated_config(arguments)
        configure_logging("supervisor", config.log.level, config.log.format)
        if config.broker.kind != "simulated":
            raise UsageError(
                f"[broker] kind = {config.broker.kind!r}: `up` runs the replay of `run "
                "market-data`; trade on an exchange with `deepfactor paper --exchange ID`"
            )
        out_dir = Path(arguments.out or config.run.run_dir)
        check_output_dir(out_dir, "--out" if arguments.out else "[run] run_dir")
        if "market-data" in config.supervisor.services:
            from services.runtime.assembly import check_universe

            _parse_speed(arguments.speed, config.paper.speed)
            _, panel = _replay_panels(arguments, config)
            where = f"--data {arguments.data}" if arguments.data else "the data"
            check_universe(config, panel.symbols, where)
            del panel  # checked; the market-data child loads its own
    except (ConfigError, DataError, UsageError) as error:
        return _error(str(error))
    stop = threading.Event()
    supervisor: Supervisor | None = None

    def on_signal(number: int, frame: FrameType | None) -> None:
        if stop.is_set() and supervisor is not None:  # second signal: kill the children
            supervisor.hurry.set()
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    embedded: EmbeddedRedis | None = None
    try:
        with SupervisorLock(out_dir):
            url = config.bus.redis_url
            if not url:
                embedded = EmbeddedRedis(out_dir / "redis")
                url = embedded.start()
            # The URL goes by environment, not argv: a password must not show in `ps`.
            env = {**os.environ, "DEEPFACTOR_BUS__REDIS_URL": url}
            if config.log.format == "auto" and sys.stderr.isatty():
                env["DEEPFACTOR_LOG__FORMAT"] = "console"  # `run` logs JSON unless told
            common = ["--out", str(out_dir), "--wait", f"{arguments.wait:g}"]
            if arguments.config:
                common += ["--config", arguments.config]
            if arguments.instance:
                common += ["--instance", arguments.instance]
            replay = ["--data", arguments.data] if arguments.data else []
            replay += ["--synthetic"] if arguments.synthetic else []
            replay += ["--bars", str(arguments.bars)] if arguments.bars is not None else []
            replay += ["--speed", arguments.speed] if arguments.speed is not None else []
            specs = run_commands(
                config.supervisor.services, common=common, replay=replay, fresh=arguments.fresh
            )
            supervisor = Supervisor(specs, config.supervisor, env=env)
            code = supervisor.run(stop)
            if supervisor.gave_up is not None:
                print(f"error: gave up: {supervisor.gave_up}", file=sys.stderr)
            return code
    except UsageError as error:
        return _error(str(error))
    except BusError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if embedded is not None:
            embedded.stop()
        for number, handler in previous.items():
            signal.signal(number, handler)


def _tail(arguments: argparse.Namespace) -> int:
    import msgspec

    from engine.errors import BusError, ConfigError, UsageError
    from services.commands.operator import account_bus
    from services.commands.tail import check_topics, run_tail

    stop = threading.Event()

    def on_signal(number: int, frame: FrameType | None) -> None:
        stop.set()

    try:
        topics = check_topics(arguments.topics)
        if arguments.last < 0:
            raise UsageError(f"--last must be a count >= 0, received {arguments.last}")
        config = _validated_config(arguments)
        _configure_command_logging("tail", config)
        if arguments.redis_url:
            config = msgspec.structs.replace(
                config, bus=msgspec.structs.replace(config.bus, redis_url=arguments.redis_url)
            )
        out_dir = Path(arguments.out or config.run.run_dir)
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            with account_bus(config, out_dir, start_server=False) as bus:

                def write(line: str) -> None:
                    print(line, flush=True)

                run_tail(bus, topics, stop, write, last=arguments.last, as_json=arguments.json)
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
    except (ConfigError, UsageError) as error:
        return _error(str(error))
    except BusError as error:
        if stop.is_set():  # stopped while Redis was being waited for
            return EXIT_OK
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `deepfactor tail | head`: the reader is gone
        sys.stderr.close()
    return EXIT_OK


def _factors_report(arguments: argparse.Namespace) -> int:
    from engine.data import load_panel
    from engine.errors import ConfigError, DataError, UsageError
    from engine.logging import configure_logging
    from services.commands.preflight import check_output_dir

    if arguments.horizon < 1:
        return _error(f"--horizon must be a positive number of bars, received {arguments.horizon}")
    if arguments.quantiles < 2:
        return _error(f"--quantiles must be >= 2, received {arguments.quantiles}")
    configure_logging("factors", "info", "auto")
    try:
        check_output_dir(Path(arguments.out))
        panel = load_panel(arguments.data)
        from services.commands.factor_report import run_factor_report

        run_factor_report(panel, Path(arguments.out), arguments.horizon, arguments.quantiles)
    except (ConfigError, DataError, UsageError, ValueError) as error:
        return _error(str(error))
    return EXIT_OK


def _data_fetch(arguments: argparse.Namespace) -> int:
    from engine.errors import DataError, UsageError
    from engine.logging import configure_logging
    from services.commands.preflight import check_output_file

    configure_logging("data-fetch", "info", "auto")
    symbols = [s.strip() for s in arguments.symbols.split(",") if s.strip()]
    if not symbols:
        return _error("--symbols must list at least one symbol, e.g. BTC/USDT,ETH/USDT")
    try:
        check_output_file(Path(arguments.out))
    except UsageError as error:
        return _error(str(error))
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


def _replay(arguments: argparse.Namespace) -> int:
    from engine.errors import ConfigError, DataError, UsageError
    from engine.logging import configure_logging
    from services.runtime.loop import HandlerFailedError

    configure_logging("replay", "info", "auto")  # until the run's own config is read
    try:
        from services.commands.replay import load_recorded_run, replay

        recorded = load_recorded_run(Path(arguments.run_dir))
    except (ConfigError, DataError, UsageError) as error:
        return _error(str(error))
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


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every ``deepfactor`` command."""
    parser = argparse.ArgumentParser(
        prog="deepfactor",
        description="Deep-learning multi-factor strategy under hard risk limits.",
    )
    parser.add_argument("--version", action="version", version=f"deepfactor {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    paper = commands.add_parser(
        "paper", help="paper-trade every service over Redis against the simulated broker"
    )
    paper.add_argument("--config", metavar="F", help="TOML config (defaults if omitted)")
    source = paper.add_mutually_exclusive_group()
    source.add_argument(
        "--data",
        metavar="F",
        help="replay this market-data file (default: the bundled real sample, "
        "19 US stocks, daily closes 2014-2024)",
    )
    source.add_argument(
        "--synthetic",
        action="store_true",
        help="replay the seeded synthetic market of [market] instead",
    )
    source.add_argument(
        "--exchange",
        metavar="ID",
        help="live: poll closed candles of --symbols from this ccxt exchange",
    )
    paper.add_argument("--symbols", metavar="A/B,C/D", help="live: the universe")
    paper.add_argument(
        "--live",
        action="store_true",
        help='with --exchange: trade real money through [broker] kind = "ccxt" (also needs '
        "sandbox = false, live_confirm = true; keys from DEEPFACTOR_EXCHANGE_API_KEY and "
        "DEEPFACTOR_EXCHANGE_SECRET)",
    )
    paper.add_argument("--timeframe", default="1m", metavar="TF", help="live: bar length (1m)")
    paper.add_argument(
        "--warmup-bars",
        type=int,
        default=300,
        metavar="N",
        help="live: closed bars fetched first so factor windows start full",
    )
    paper.add_argument(
        "--bars",
        type=int,
        metavar="N",
        help="the account's bars in all, restarts included (0: all)",
    )
    paper.add_argument("--speed", metavar="X|max", help="bars per second; 0 or max: no cap")
    paper.add_argument(
        "--out",
        metavar="DIR",
        help="run directory (default: [run] run_dir); a directory of an earlier run continues "
        "its account",
    )
    paper.add_argument(
        "--fresh",
        action="store_true",
        help="start a new account in --out, deleting the one there",
    )
    paper.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis to use instead of a private server in the run directory",
    )
    paper.set_defaults(run=_paper)

    run_command = commands.add_parser(
        "run",
        help="run one service of a paper account as its own process, over a shared Redis",
        description="Run one service in the foreground. The market-data process (the replay) "
        "opens or continues the paper account in --out; every other service waits for it and "
        "joins it. One active process per service and account: a second one of a consuming "
        "service is a hot standby that takes over when the first stops or dies (one "
        "market-data per run directory). SIGTERM or SIGINT finishes and "
        "commits the message in hand and exits 0, a second signal exits 130. The recorder "
        "writes summary.json and equity.csv into --out at the end of the data and when it stops.",
    )
    run_command.add_argument(
        "service",
        choices=("market-data", "factor-update", "signal", "rebalance", "execution", "recorder"),
        metavar="SERVICE",
        help="market-data (the replay), factor-update, signal, rebalance, execution or recorder",
    )
    run_command.add_argument("--config", metavar="F", help="TOML config (defaults if omitted)")
    run_command.add_argument(
        "--out",
        metavar="DIR",
        help="the account's run directory, shared by its processes (default: [run] run_dir)",
    )
    run_command.add_argument(
        "--redis-url", metavar="URL", help="the Redis every process of the account uses"
    )
    run_command.add_argument(
        "--instance",
        metavar="NAME",
        help="consumer name {service}-{NAME}, stable across restarts (default: [run] "
        "instance, else the host name)",
    )
    run_command.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for the account (a consumer) or for every consumer group "
        "(market-data) before giving up (default 60)",
    )
    run_source = run_command.add_mutually_exclusive_group()
    run_source.add_argument(
        "--data", metavar="F", help="market-data: replay this file (default: the bundled sample)"
    )
    run_source.add_argument(
        "--synthetic", action="store_true", help="market-data: replay the synthetic market"
    )
    run_command.add_argument(
        "--bars",
        type=int,
        metavar="N",
        help="market-data: the account's bars in all, restarts included (0: all)",
    )
    run_command.add_argument(
        "--speed", metavar="X|max", help="market-data: bars per second; 0 or max: no cap"
    )
    run_command.add_argument(
        "--fresh",
        action="store_true",
        help="market-data: start a new account in --out, deleting the one there",
    )
    run_command.set_defaults(run=_run_service)

    up = commands.add_parser(
        "up",
        help="start every service of a paper account as its own process and keep them running",
        description="Start each service of [supervisor] services as a `deepfactor run SERVICE` "
        "child over one Redis (the run directory's private server unless a URL is given), "
        "restart one that dies (with backoff; gives up after [supervisor] max_restarts within "
        "restart_window_s and stops all, exit 1), and stop them all cleanly on SIGTERM or "
        "Ctrl-C (a second signal kills them). The replay (market-data) exiting at the end of "
        "its data is not restarted; the other services run until stopped.",
    )
    up.add_argument("--config", metavar="F", help="TOML config (defaults if omitted)")
    up.add_argument(
        "--out", metavar="DIR", help="the account's run directory (default: [run] run_dir)"
    )
    up.add_argument("--redis-url", metavar="URL", help="a Redis instead of the private server")
    up.add_argument("--instance", metavar="NAME", help="consumer instance name (see `run`)")
    up.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds each service waits for the account or the consumer groups (default 60)",
    )
    up_source = up.add_mutually_exclusive_group()
    up_source.add_argument("--data", metavar="F", help="replay this file (default: the sample)")
    up_source.add_argument("--synthetic", action="store_true", help="replay the synthetic market")
    up.add_argument("--bars", type=int, metavar="N", help="the account's bars in all (0: all)")
    up.add_argument("--speed", metavar="X|max", help="bars per second; 0 or max: no cap")
    up.add_argument(
        "--fresh",
        action="store_true",
        help="start a new account in --out (the first start of the replay only)",
    )
    up.set_defaults(run=_up)

    backtest = commands.add_parser(
        "backtest",
        help="run the services in one process on a data file; write summary.json, equity.csv "
        "and the files `report` reads",
    )
    backtest.add_argument(
        "--data",
        metavar="F",
        required=True,
        help="long OHLCV or wide close-only file (CSV, CSV.gz, Parquet)",
    )
    backtest.add_argument("--out", metavar="DIR", required=True)
    backtest.add_argument("--config", metavar="F")
    backtest.add_argument(
        "--strategy",
        metavar="NAME",
        default=None,
        help=f"signal model: {', '.join(STRATEGIES)} (default: [strategy] name); lstm, "
        "asset-lstm and ridge serve the active checkpoint of the registry",
    )
    backtest.add_argument(
        "--registry", metavar="DIR", help="model registry (default: [model] registry)"
    )
    backtest.set_defaults(run=_backtest)

    train = commands.add_parser(
        "train",
        help="train a signal model walk-forward on a data file and save a checkpoint",
        description="Walk-forward training: refits every [model] retrain_every periods and "
        "scores each fit on the periods after it, next to the baselines; then fits once more "
        "on all the data and saves the checkpoint in the registry (active when there is none "
        "or when it validates better). Writes train.json into --out.",
    )
    train_source = train.add_mutually_exclusive_group()
    train_source.add_argument("--data", metavar="F", help="data file (default: the bundled sample)")
    train_source.add_argument(
        "--synthetic", action="store_true", help="train on the synthetic market"
    )
    train.add_argument("--bars", type=int, metavar="N", help="use the first N bars (0: all)")
    train.add_argument("--out", metavar="DIR", required=True, help="where train.json goes")
    train.add_argument("--config", metavar="F")
    train.add_argument(
        "--model", default="lstm", choices=("lstm", "asset-lstm", "ridge"), help="what to train"
    )
    train.add_argument(
        "--baselines",
        default="trailing-ic,equal-weight,ridge",
        metavar="LIST",
        help="models scored next to it, comma-separated (default trailing-ic,equal-weight,ridge)",
    )
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: [model] device")
    train.add_argument("--registry", metavar="DIR", help="default: [model] registry")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(run=_train, bars=None)

    retrain = commands.add_parser(
        "retrain",
        help="the periodic retraining worker: refit on a schedule, activate only a better model",
        description="On each fire (--cron or --interval, APScheduler) re-read the data, fit the "
        "model on every labelled period, save it, and make it active only if it beats the "
        "active one on the same validation periods; with --out and a Redis, tell that paper "
        "account's signal service to reload. --once: one retraining now, then exit.",
    )
    retrain_source = retrain.add_mutually_exclusive_group()
    retrain_source.add_argument("--data", metavar="F", help="data file (default: the sample)")
    retrain_source.add_argument("--synthetic", action="store_true", help="the synthetic market")
    retrain.add_argument("--bars", type=int, metavar="N", help="use the first N bars (0: all)")
    retrain.add_argument("--config", metavar="F")
    retrain.add_argument("--model", default="lstm", choices=("lstm", "asset-lstm", "ridge"))
    retrain_when = retrain.add_mutually_exclusive_group(required=True)
    retrain_when.add_argument("--cron", default="", metavar="EXPR", help="crontab (UTC)")
    retrain_when.add_argument("--interval", default="", metavar="N[smhdw]", help="e.g. 7d")
    retrain_when.add_argument("--once", action="store_true", help="retrain once now and exit")
    retrain.add_argument("--out", metavar="DIR", help="paper account to send the reload to")
    retrain.add_argument("--redis-url", metavar="URL", help="that account's Redis")
    retrain.add_argument("--registry", metavar="DIR", help="default: [model] registry")
    retrain.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="default: [model] device"
    )
    retrain.set_defaults(run=_retrain)

    factors = commands.add_parser("factors", help="factor research")
    factor_commands = factors.add_subparsers(dest="factors_command", required=True)
    report = factor_commands.add_parser(
        "report", help="rank IC and long-short return of every factor on a data file"
    )
    report.add_argument("--data", metavar="F", required=True)
    report.add_argument("--out", metavar="DIR", required=True)
    report.add_argument(
        "--horizon",
        type=int,
        default=7,
        metavar="BARS",
        help="period length in bars: returns over the next period (default 7)",
    )
    report.add_argument("--quantiles", type=int, default=5, help="long-short quantiles (default 5)")
    report.set_defaults(run=_factors_report)

    data = commands.add_parser("data", help="market data")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    fetch = data_commands.add_parser("fetch", help="download OHLCV history through ccxt")
    fetch.add_argument(
        "--exchange", required=True, metavar="ID", help="ccxt exchange id, e.g. binance"
    )
    fetch.add_argument("--symbols", required=True, metavar="A/B,C/D")
    fetch.add_argument("--timeframe", required=True, metavar="TF", help="e.g. 1h, 1d")
    fetch.add_argument(
        "--since", required=True, metavar="DATE", help="UTC date or time, e.g. 2024-01-01"
    )
    fetch.add_argument("--until", metavar="DATE", help="UTC end (default: now)")
    fetch.add_argument("--out", required=True, metavar="F", help=".parquet, .csv or .csv.gz")
    fetch.set_defaults(run=_data_fetch)

    replay = commands.add_parser(
        "replay",
        help="run a paper run's recorded bars, ticks and controls through the services again "
        "and compare its orders, fills and final equity with the run's event log",
    )
    replay.add_argument(
        "run_dir", metavar="RUN_DIR", help="a paper run's directory (events.jsonl, config.json)"
    )
    replay.add_argument("--json", action="store_true", help="print the report as JSON")
    replay.set_defaults(run=_replay)

    for name, help_text in (
        ("halt", "kill switch: stop every new order of a paper account (--flatten: close all)"),
        ("resume", "lift the kill switch of a paper account"),
        ("status", "show a paper account's equity, drawdown, VaR and kill switch"),
    ):
        operator = commands.add_parser(name, help=help_text, description=help_text)
        operator.add_argument("--config", metavar="F", help="TOML config (defaults if omitted)")
        operator.add_argument(
            "--out", metavar="DIR", help="the account's run directory (default: [run] run_dir)"
        )
        operator.add_argument("--redis-url", metavar="URL", help="the account's Redis")
        if name == "halt":
            operator.add_argument(
                "--flatten",
                action="store_true",
                help="also close every position, with reduce-only orders",
            )
        if name in ("halt", "resume"):
            operator.add_argument("--reason", default="", help="why, kept with the flag and logged")
        else:
            operator.add_argument("--json", action="store_true", help="print JSON")
            operator.add_argument(
                "--service",
                metavar="NAME",
                help="exit 1 unless an instance of this service is alive (a healthcheck)",
            )
        operator.set_defaults(run=_operator, command_name=name)

    tail = commands.add_parser(
        "tail",
        help="follow a paper account's event streams, one readable line per event",
        description="Print each new event of the account's streams as it is published (all "
        "topics but heartbeat unless named), until Ctrl-C. Reads without a consumer group: "
        "it takes nothing from the services.",
    )
    tail.add_argument(
        "topics",
        nargs="*",
        metavar="TOPIC",
        help="bars, factors, signals, schedule, targets, orders, order_updates, fills, "
        "portfolio, risk, control, heartbeat",
    )
    tail.add_argument("--config", metavar="F", help="TOML config (defaults if omitted)")
    tail.add_argument(
        "--out", metavar="DIR", help="the account's run directory (default: [run] run_dir)"
    )
    tail.add_argument("--redis-url", metavar="URL", help="the account's Redis")
    tail.add_argument(
        "--last", type=int, default=0, metavar="N", help="first show the N newest of each topic"
    )
    tail.add_argument("--json", action="store_true", help="one JSON object per event")
    tail.set_defaults(run=_tail)

    from services.commands.report import add_report_command

    add_report_command(commands)

    config = commands.add_parser("config", help="inspect configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser(
        "check", help="validate a config file with environment overrides and print the result"
    )
    check.add_argument("--config", metavar="FILE", help="TOML config file (defaults if omitted)")
    check.set_defaults(run=_config_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    arguments = build_parser().parse_args(argv)
    return arguments.run(arguments)


if __name__ == "__main__":
    sys.exit(main())
