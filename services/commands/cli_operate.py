"""The operator's commands on a running account: ``halt``, ``resume``, ``status``, ``tail``,
and ``config check``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from services.commands.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    configure_command_logging,
    on_stop_signals,
    restore_signals,
    usage_error,
    validated_config,
)


def cmd_operator(arguments: argparse.Namespace) -> int:

    import msgspec

    from engine.errors import BusError, ConfigError, UsageError
    from services.commands.operator import account_bus, set_kill_switch

    try:
        config = validated_config(arguments)
        configure_command_logging(arguments.command_name, config)
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
        return usage_error(str(error))
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


def cmd_tail(arguments: argparse.Namespace) -> int:
    import msgspec

    from engine.errors import BusError, ConfigError, UsageError
    from services.commands.operator import account_bus
    from services.commands.tail import check_topics, run_tail

    stop = threading.Event()

    try:
        topics = check_topics(arguments.topics)
        if arguments.last < 0:
            raise UsageError(f"--last must be a count >= 0, received {arguments.last}")
        config = validated_config(arguments)
        configure_command_logging("tail", config)
        if arguments.redis_url:
            config = msgspec.structs.replace(
                config, bus=msgspec.structs.replace(config.bus, redis_url=arguments.redis_url)
            )
        out_dir = Path(arguments.out or config.run.run_dir)
        previous = on_stop_signals(stop)
        try:
            with account_bus(config, out_dir, start_server=False) as bus:

                def write(line: str) -> None:
                    print(line, flush=True)

                run_tail(bus, topics, stop, write, last=arguments.last, as_json=arguments.json)
        finally:
            restore_signals(previous)
    except (ConfigError, UsageError) as error:
        return usage_error(str(error))
    except BusError as error:
        if stop.is_set():  # stopped while Redis was being waited for
            return EXIT_OK
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `deepfactor tail | head`: the reader is gone
        sys.stderr.close()
    return EXIT_OK


def cmd_config_check(arguments: argparse.Namespace) -> int:
    import msgspec

    from engine.errors import ConfigError
    from engine.logging import redact_secrets

    try:
        config = validated_config(arguments)
    except ConfigError as error:
        return usage_error(str(error))
    shown = redact_secrets(None, "info", msgspec.to_builtins(config))
    print(msgspec.json.format(msgspec.json.encode(shown), indent=2).decode())
    return EXIT_OK
