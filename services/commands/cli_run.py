"""The commands that run an account: ``paper`` (every service in one process), ``run SERVICE``
(one service per process) and ``up`` (every service as a supervised child).
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from services.commands.cli_common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    cold_stop,
    load_and_log,
    on_stop_signals,
    parse_speed,
    print_summary,
    replay_panels,
    restore_signals,
    usage_error,
    validated_config,
)

if TYPE_CHECKING:
    from brokers.protocol import Broker


def cmd_paper(arguments: argparse.Namespace) -> int:
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
        config = load_and_log(arguments, "paper")
        if config.broker.kind != "simulated" and not arguments.exchange:
            raise UsageError(
                f"[broker] kind = {config.broker.kind!r} trades on an exchange now: it needs "
                "live candles (--exchange ID --symbols A/B,...); a replay trades on the "
                "simulated broker"
            )
        from services.runtime.assembly import check_universe, make_broker

        venue = make_broker(config, live=arguments.live)  # its settings and keys, at once

        speed = parse_speed(arguments.speed, config.paper.speed)
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
            history, panel = replay_panels(arguments, config)
            where = f"--data {arguments.data}" if arguments.data else "the data"
            check_universe(config, panel.symbols, where)
    except (ConfigError, DataError, UsageError) as error:
        if run_dir is not None:  # refused before it started: leave the directory as found
            run_dir.release(discard=True)
        return usage_error(str(error))
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
        if config.broker.kind != "simulated" and new_account(out_dir, arguments.fresh):
            refused = check_budget(venue, config.portfolio.initial_cash, symbols)
            if refused is not None:
                run_dir.release(discard=True)
                return refused
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
        return usage_error(str(error))

    previous = on_stop_signals(stop, cold_stop)
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
        return usage_error(str(error))
    except BusError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        restore_signals(previous)
        run_dir.release()
    title = "paper" + (" (stopped early)" if run.interrupted else "")
    if run.restarts:
        title += f" (account continued; {run.restarts} restart(s))"
    print_summary(title, run.summary, out_dir)
    return EXIT_OK


def new_account(out_dir: Path, fresh: bool) -> bool:
    """Whether this run opens a new paper account in ``out_dir`` (rather than continuing one)."""
    from services.runtime.account import ACCOUNT_FILE

    return fresh or not (out_dir / ACCOUNT_FILE).exists()


def check_budget(venue: Broker, initial_cash: float, symbols: list[str]) -> int | None:
    """A new account on an exchange: its budget must be in the exchange account's free cash
    (services/runtime/budget.py). Returns the exit code of a refusal, None when it holds."""
    from brokers.protocol import BrokerError
    from engine.errors import ConfigError
    from services.runtime.budget import check_exchange_budget

    try:
        check_exchange_budget(venue, initial_cash, symbols)
    except ConfigError as error:
        return usage_error(str(error))
    except BrokerError as error:
        print(f"error: cannot read the exchange account's balances: {error}", file=sys.stderr)
        return EXIT_FAILED
    return None


def cmd_run(arguments: argparse.Namespace) -> int:
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
        config = validated_config(arguments)
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

            speed = parse_speed(arguments.speed, config.paper.speed)
            _, panel = replay_panels(arguments, config)
            where = f"--data {arguments.data}" if arguments.data else "the data"
            check_universe(config, panel.symbols, where)
    except (ConfigError, DataError, UsageError) as error:
        return usage_error(str(error))
    stop = threading.Event()

    previous = on_stop_signals(stop, cold_stop)
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
        return usage_error(str(error))
    except (BusError, StartTimeoutError, StateError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        restore_signals(previous)
    return EXIT_OK


def cmd_up(arguments: argparse.Namespace) -> int:
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
        config = validated_config(arguments)
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

            parse_speed(arguments.speed, config.paper.speed)
            _, panel = replay_panels(arguments, config)
            where = f"--data {arguments.data}" if arguments.data else "the data"
            check_universe(config, panel.symbols, where)
            del panel  # checked; the market-data child loads its own
    except (ConfigError, DataError, UsageError) as error:
        return usage_error(str(error))
    stop = threading.Event()
    supervisor: Supervisor | None = None

    def hurry() -> None:  # a second signal: kill the children
        if supervisor is not None:
            supervisor.hurry.set()

    previous = on_stop_signals(stop, hurry)
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
                config.supervisor.services,
                common=common,
                replay=replay,
                fresh=arguments.fresh,
                signal_instances=config.supervisor.signal_instances,
                metrics_port=config.metrics.port
                if config.metrics.enabled and not config.metrics.process_port
                else None,
                instance=arguments.instance or config.run.instance,
            )
            supervisor = Supervisor(specs, config.supervisor, env=env)
            code = supervisor.run(stop)
            if supervisor.gave_up is not None:
                print(f"error: gave up: {supervisor.gave_up}", file=sys.stderr)
            return code
    except UsageError as error:
        return usage_error(str(error))
    except BusError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if embedded is not None:
            embedded.stop()
        restore_signals(previous)
