"""``deepfactor`` command line: parse, load config, call into services, return an exit code.

Heavy libraries (torch, pandas) are imported inside the commands that use them, so start-up
stays fast for everything else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

EXIT_OK = 0
EXIT_USAGE = 2  # bad arguments or bad config: nothing was started


def _version() -> str:
    try:
        return version("deepfactor")
    except PackageNotFoundError:
        return "unknown"


def _config_check(arguments: argparse.Namespace) -> int:
    import msgspec

    from engine.config import load_config
    from engine.errors import ConfigError
    from engine.logging import redact_secrets

    try:
        config = load_config(arguments.config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    shown = redact_secrets(None, "info", msgspec.to_builtins(config))
    print(msgspec.json.format(msgspec.json.encode(shown), indent=2).decode())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every ``deepfactor`` command."""
    parser = argparse.ArgumentParser(
        prog="deepfactor",
        description="Deep-learning multi-factor strategy under hard risk limits.",
    )
    parser.add_argument("--version", action="version", version=f"deepfactor {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
