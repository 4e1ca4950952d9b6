"""Load a TOML config, apply ``DEEPFACTOR_SECTION__KEY`` environment overrides, and validate it
once into frozen structs, with errors that name the file, the key, what was expected and what
was received."""

from __future__ import annotations

import datetime
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from engine.config.schema import METRICS_SERVICES, Config
from engine.errors import ConfigError
from engine.redis_url import is_sentinel_url, parse_sentinel_url

ENV_PREFIX = "DEEPFACTOR_"
_REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")


def _parse_env_value(text: str) -> Any:
    # A TOML literal if it is one ("5", "true", "[\"a\"]"), else the plain string.
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _dates_as_text(value: Any) -> Any:
    # TOML reads `start = 2020-01-02` (unquoted, in a file or an environment value) as a date;
    # every date in the config is a string field, so it is taken as its ISO text.
    if isinstance(value, dict):
        return {key: _dates_as_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_dates_as_text(item) for item in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return value


def _env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, ...], tuple[str, Any]]:
    overrides: dict[tuple[str, ...], tuple[str, Any]] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        if any(not part for part in path):
            raise ConfigError(f"environment {name}: empty key segment, expected SECTION__KEY")
        overrides[path] = (name, _parse_env_value(text))
    return overrides


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any, origin: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"environment {origin}: [{part}] is not a table in the config")
        node = child
    node[path[-1]] = value


def _describe(path: str) -> str:
    # "$.bus.max_deliveries" -> "[bus] max_deliveries"; "$.bus" -> "[bus]"
    parts = [p for p in path.removeprefix("$").split(".") if p]
    if not parts:
        return "<top level>"
    if len(parts) == 1:
        return f"[{parts[0]}]"
    return f"[{'.'.join(parts[:-1])}] {parts[-1]}"


def _lookup(tree: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = tree
    for key, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path.removeprefix("$")):
        if key:
            if not isinstance(node, Mapping) or key not in node:
                return False, None
            node = node[key]
        else:
            if not isinstance(node, list) or int(index) >= len(node):
                return False, None
            node = node[int(index)]
    return True, node


def _validation_message(
    error: msgspec.ValidationError,
    tree: Mapping[str, Any],
    source: str,
    env_origins: Mapping[tuple[str, ...], str],
) -> str:
    message = str(error)
    problem, separator, path = message.rpartition(" - at `")
    if not separator:  # an error at the top level carries no path
        problem, path = message, "$"
    path = path.rstrip("`")
    if problem.startswith("Object contains unknown field"):
        unknown = problem.split("`")[1]
        where = _describe(f"{path}.{unknown}")
        return f"config {source}: {where} is not a known setting"
    expected = _expected_text(problem, path)
    found, received = _lookup(tree, path)
    key = tuple(p for p in path.removeprefix("$").split(".") if p)
    origin = f" (from environment {env_origins[key]})" if key in env_origins else ""
    received_text = f", received {received!r}" if found else ""
    return f"config {source}: {_describe(path)} must be {expected}{received_text}{origin}"


def _expected_text(problem: str, path: str) -> str:
    # msgspec: "Expected `int` >= 1", "Expected `int`, got `str`", "Invalid enum value 'x'".
    if problem.startswith("Invalid enum value"):
        choices = _literal_choices(path)
        return "one of " + ", ".join(repr(c) for c in choices) if choices else problem
    expected = problem.removeprefix("Expected ").split(", got ")[0]
    return expected.replace("`", "")


def _literal_choices(path: str) -> tuple[Any, ...]:
    node: Any = Config
    for part in [p for p in path.removeprefix("$").split(".") if p]:
        field = next((f for f in msgspec.structs.fields(node) if f.name == part), None)
        if field is None:
            return ()
        node = field.type
    return typing.get_args(node) if typing.get_origin(node) is typing.Literal else ()


def _check_redis_url(url: str, source: str, from_env: bool) -> None:
    if not url:
        return
    parts = urlsplit(url)
    if parts.scheme not in _REDIS_SCHEMES:
        raise ConfigError(
            f"config {source}: [bus] redis_url must start with redis://, rediss://, unix://, "
            f"redis+sentinel:// or rediss+sentinel://, received scheme {parts.scheme!r}"
        )
    password = ":" in parts.netloc.rpartition("@")[0]
    if is_sentinel_url(url):
        try:
            password = parse_sentinel_url(url).password is not None
        except ValueError as error:
            raise ConfigError(
                f"config {source}: [bus] redis_url is not a Sentinel URL "
                f"(redis+sentinel://[:password@]host[:port][,host[:port]...]/PRIMARY_NAME[/DB]): "
                f"{error}"
            ) from None
    if password and not from_env:
        raise ConfigError(
            f"config {source}: [bus] redis_url carries a password; secrets come only from the "
            f"environment: set {ENV_PREFIX}BUS__REDIS_URL instead"
        )


def _check_supervisor(config: Config, source: str) -> None:
    supervisor = config.supervisor
    twice = sorted({s for s in supervisor.services if supervisor.services.count(s) > 1})
    if twice:
        raise ConfigError(
            f"config {source}: [supervisor] services lists {', '.join(twice)} more than once "
            "(one process per service and run directory)"
        )
    if supervisor.backoff_max_s < supervisor.backoff_initial_s:
        raise ConfigError(
            f"config {source}: [supervisor] backoff_max_s = {supervisor.backoff_max_s:g} is "
            f"below backoff_initial_s = {supervisor.backoff_initial_s:g}"
        )


def _check_metrics(config: Config, source: str) -> None:
    # The port rule (port + the service's index) must give every service a valid port.
    highest = 65535 - (len(METRICS_SERVICES) - 1)
    if config.metrics.port > highest:
        raise ConfigError(
            f"config {source}: [metrics] port must be at most {highest}, so that port + "
            f"{len(METRICS_SERVICES) - 1} ({METRICS_SERVICES[-1]}, the last service) is a port, "
            f"received {config.metrics.port}"
        )
    # `up`'s extra signal children serve after the eight: port + 8, + 9, ...
    extra = config.supervisor.signal_instances - 1
    last = config.metrics.port + len(METRICS_SERVICES) - 1 + extra
    if config.metrics.enabled and extra and last > 65535:
        raise ConfigError(
            f"config {source}: [metrics] port {config.metrics.port} leaves no port for "
            f"signal child {extra + 1} of [supervisor] signal_instances = {extra + 1} "
            f"(port + {len(METRICS_SERVICES) + extra - 1} = {last} > 65535)"
        )


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Return the validated config of ``path`` (defaults when None) with env overrides applied.

    Raises
    ------
    ConfigError
        When the file cannot be read or parsed, a key is unknown, or a value is out of range.
    """
    environ = os.environ if environ is None else environ
    source = str(path) if path is not None else "<defaults>"
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            tree = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config {source}: file not found") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config {source}: not valid TOML: {error}") from None
    overrides = _env_overrides(environ)
    env_origins = {key: name for key, (name, _) in overrides.items()}
    for key, (name, value) in overrides.items():
        _set_path(tree, key, value, name)
    try:
        config = msgspec.convert(_dates_as_text(tree), Config, strict=True)
    except msgspec.ValidationError as error:
        raise ConfigError(_validation_message(error, tree, source, env_origins)) from None
    _check_redis_url(config.bus.redis_url, source, ("bus", "redis_url") in env_origins)
    _check_supervisor(config, source)
    _check_metrics(config, source)
    return config
