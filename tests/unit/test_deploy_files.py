"""The files of ``deploy/`` hold commands and settings that fail only when someone deploys them:
a renamed option, a service the CLI no longer has, a config key the schema refuses, a torch pin
that drifted from pyproject's. Each test reads a file the way its tool does (docker compose's
YAML through a strict subset, systemd units and supervisord.conf through configparser, as
supervisord itself does) and runs every ``deepfactor`` command line in it through the real
parser of ``services.commands.cli``, every example config through ``deepfactor config check``.

What needs a tool this suite cannot assume (docker compose, systemd-analyze, supervisord) is
not here: ``deploy/verify.sh`` runs those checks where the tools exist.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import io
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from services.commands.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Where every deployment keeps the account's run directory and the configs.
STATE_DIR = "/var/lib/deepfactor"
RUN_DIR = f"{STATE_DIR}/run"
CONFIG_DIR = "/etc/deepfactor"
ENV_FILE = f"{CONFIG_DIR}/deepfactor.env"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def run_services() -> tuple[str, ...]:
    """The services ``deepfactor run`` accepts, read from the real parser: a service added
    there must get its container, unit instance and supervisord program."""
    run = _subparsers(build_parser())["run"]
    service = next(a for a in run._actions if a.dest == "service")
    return tuple(service.choices)


SERVICES = run_services()
COMMANDS = frozenset(_subparsers(build_parser()))


def parse_command(argv: Sequence[str], where: str) -> argparse.Namespace:
    """Parse ``deepfactor ARGV`` with the real parser; fail naming ``where`` and argparse's
    own complaint when it refuses (argparse exits 2 and writes to stderr)."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return build_parser().parse_args(list(argv))
    except SystemExit:
        complaint = (errors.getvalue().strip().splitlines() or ["(no message)"])[-1]
    pytest.fail(
        f"{where}: `deepfactor {shlex.join(argv)}` is refused by the command line: {complaint}"
    )


def parse_executable(argv: Sequence[str], where: str) -> argparse.Namespace:
    """Parse a full command line whose first word is an installed ``deepfactor``."""
    script = next(iter(PYPROJECT["project"]["scripts"]))
    assert Path(argv[0]).name == script, f"{where}: runs {argv[0]!r}, not the {script} script"
    return parse_command(argv[1:], where)


# -- docker-compose.yml: a strict YAML subset ------------------------------------------------


class SubsetError(ValueError):
    """docker-compose.yml left the YAML subset these tests read (see ``read_yaml_subset``)."""


@dataclass(frozen=True)
class _Line:
    number: int
    indent: int
    text: str


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]+")
_INT = re.compile(r"-?[0-9]+")
# Plain scalars PyYAML (YAML 1.1) would read as booleans or null: quote them instead.
_AMBIGUOUS = {"yes", "no", "on", "off", "y", "n", "null", "~", "True", "False", "Yes", "No"}


def _strip_comment(text: str) -> str:
    quoted = False
    for index, char in enumerate(text):
        if char == '"' and (index == 0 or text[index - 1] != "\\"):
            quoted = not quoted
        elif char == "#" and not quoted and (index == 0 or text[index - 1] == " "):
            return text[:index].rstrip()
    return text.rstrip()


def _lines(text: str) -> list[_Line]:
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if "\t" in raw:
            raise SubsetError(f"line {number}: a tab (YAML indents with spaces only)")
        content = _strip_comment(raw)
        if content.strip():
            stripped = content.lstrip(" ")
            lines.append(_Line(number, len(content) - len(stripped), stripped))
    return lines


def _scalar(text: str, number: int) -> Any:
    if text.startswith(("[", '"')):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise SubsetError(f"line {number}: not a JSON list or string: {error}") from None
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            raise SubsetError(f"line {number}: a flow list holds strings only here")
        return value
    if text in ("true", "false"):
        return text == "true"
    if _INT.fullmatch(text):
        return int(text)
    if text in _AMBIGUOUS or text[0] in "&*!|>{'%@`" or ": " in text or text.endswith(":"):
        raise SubsetError(f"line {number}: {text!r} needs double quotes in this subset")
    return text


def _block(lines: list[_Line], start: int, indent: int) -> tuple[Any, int]:
    if lines[start].text.startswith("- "):
        items, index = [], start
        while index < len(lines) and lines[index].indent == indent:
            line = lines[index]
            if not line.text.startswith("- "):
                raise SubsetError(f"line {line.number}: a mapping key among list items")
            items.append(_scalar(line.text[2:].strip(), line.number))
            index += 1
        if index < len(lines) and lines[index].indent > indent:
            raise SubsetError(f"line {lines[index].number}: lists hold scalars only here")
        return items, index
    mapping: dict[str, Any] = {}
    index = start
    while index < len(lines) and lines[index].indent == indent:
        line = lines[index]
        key, colon, rest = line.text.partition(":")
        if not colon or not _PLAIN_KEY.fullmatch(key) or (rest and not rest.startswith(" ")):
            raise SubsetError(f"line {line.number}: expected `key: value` or `key:`")
        if key in mapping:
            raise SubsetError(f"line {line.number}: {key!r} appears twice in one mapping")
        index += 1
        if rest.strip():
            mapping[key] = _scalar(rest.strip(), line.number)
        elif index < len(lines) and lines[index].indent > indent:
            mapping[key], index = _block(lines, index, lines[index].indent)
        else:
            mapping[key] = None
    if index < len(lines) and lines[index].indent > indent:
        raise SubsetError(f"line {lines[index].number}: unexpected indentation")
    return mapping, index


def read_yaml_subset(text: str) -> dict[str, Any]:
    """Parse the YAML that docker-compose.yml keeps to: block mappings with plain keys, lists
    of scalars, plain or double-quoted scalars, and flow lists written as JSON.

    Anything else (anchors, block strings, flow mappings, lists of mappings, YAML 1.1's
    yes/no booleans) raises ``SubsetError`` rather than being read as something else. The
    project carries no YAML library, and this subset is enough for a compose file; a
    richer file should bring PyYAML along with it.
    """
    lines = _lines(text)
    if not lines:
        return {}
    if lines[0].indent:
        raise SubsetError(f"line {lines[0].number}: the top level must not be indented")
    value, end = _block(lines, 0, 0)
    if end != len(lines) or not isinstance(value, dict):
        raise SubsetError(f"line {lines[min(end, len(lines) - 1)].number}: not one mapping")
    return value


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a:\n\tb: 1\n", "tab"),
        ("x: &common\n", "double quotes"),
        ("x: yes\n", "double quotes"),
        ("a:\n  - x\n  b: 1\n", "mapping key among list items"),
        ("a:\n  - b: 1\n", "double quotes"),
        ("a: 1\na: 2\n", "twice"),
        ("a: 1\n  b: 2\n", "indentation"),
        ("a: [1, 2]\n", "strings only"),
    ],
)
def test_the_yaml_subset_reader_refuses_what_it_does_not_read(text: str, problem: str) -> None:
    """The reader must refuse, not misread: a value it got wrong would pass every check."""
    with pytest.raises(SubsetError, match=problem):
        read_yaml_subset(text)


def test_the_yaml_subset_reader_reads_compose_shapes() -> None:
    text = (
        '# a comment\nservices:\n  redis:\n    image: "redis:7"  # trailing comment\n'
        '    command: ["redis-server", "--appendonly", "yes"]\n    init: true\n'
        '    retries: 3\n    volumes:\n      - "data:/data"\n      - ./x:/y:ro\n'
        "volumes:\n  data:\n"
    )
    assert read_yaml_subset(text) == {
        "services": {
            "redis": {
                "image": "redis:7",
                "command": ["redis-server", "--appendonly", "yes"],
                "init": True,
                "retries": 3,
                "volumes": ["data:/data", "./x:/y:ro"],
            }
        },
        "volumes": {"data": None},
    }


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return read_yaml_subset((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))


def _seconds(duration: str) -> float:
    # Compose durations as written here: "30s", "2m", "90s".
    match = re.fullmatch(r"([0-9]+)(s|m)", duration)
    assert match, f"duration {duration!r}: expected a number of s or m"
    return int(match[1]) * (60 if match[2] == "m" else 1)


def test_compose_has_redis_and_one_container_per_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"redis", *SERVICES}


@pytest.mark.parametrize("service", SERVICES)
def test_each_container_runs_its_own_service_through_the_real_parser(
    compose: dict[str, Any], service: str
) -> None:
    """The image's entrypoint is ``deepfactor`` (checked against the Dockerfile below), so the
    command is the argument list the real parser gets."""
    block = compose["services"][service]
    arguments = parse_command(block["command"], f"docker-compose.yml {service}")
    assert (arguments.command, arguments.service) == ("run", service)
    assert arguments.out == RUN_DIR
    assert urlsplit(arguments.redis_url).hostname in compose["services"], "Redis is a container"
    config = Path(arguments.config)
    assert config.parent.as_posix() == CONFIG_DIR
    assert (DEPLOY / "configs" / config.name).is_file(), f"{config.name} not in deploy/configs"
    assert f"./configs:{CONFIG_DIR}:ro" in block["volumes"]


def test_service_containers_differ_in_their_service_alone(compose: dict[str, Any]) -> None:
    """Six blocks written out in full can drift; the checks below read one of them because
    this one proves the others equal (the service's name aside)."""
    first = SERVICES[0]
    template = json.dumps(compose["services"][first])
    for service in SERVICES[1:]:
        block = json.dumps(compose["services"][service])
        assert block == template.replace(f'"{first}"', f'"{service}"'), service


def test_service_containers_share_the_state_volume_and_wait_for_a_healthy_redis(
    compose: dict[str, Any],
) -> None:
    block = compose["services"][SERVICES[0]]
    volume = f"deepfactor-data:{STATE_DIR}"
    assert volume in block["volumes"] and RUN_DIR.startswith(STATE_DIR + "/")
    assert "deepfactor-data" in compose["volumes"]
    assert block["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert block["env_file"] == ["deepfactor.env"]
    assert (DEPLOY / "deepfactor.env.example").is_file()
    assert "deepfactor.env" in (DEPLOY / ".gitignore").read_text().split()
    # A stable consumer name across re-created containers (their host names change).
    assert block["environment"]["DEEPFACTOR_RUN__INSTANCE"]
    # Exit 0 is finished or stopped on request; a clean stop gets time to commit.
    assert block["restart"] == "on-failure"
    assert block["init"] is True and block["stop_signal"] == "SIGTERM"
    assert 10 <= _seconds(block["stop_grace_period"]) <= 120


def test_service_healthcheck_is_status_of_the_same_account(compose: dict[str, Any]) -> None:
    block = compose["services"][SERVICES[0]]
    served = parse_command(block["command"], "command")
    check = block["healthcheck"]
    assert check["test"][0] == "CMD"
    probe = parse_executable(check["test"][1:], "healthcheck")
    assert probe.command == "status" and probe.json
    assert (probe.out, probe.redis_url, probe.config) == (
        served.out,
        served.redis_url,
        served.config,
    )
    assert _seconds(check["timeout"]) < _seconds(check["interval"])
    # The account exists only once market-data has opened it.
    assert _seconds(check["start_period"]) >= 30


def _redis_options(argv: Sequence[str]) -> dict[str, str]:
    # ["redis-server", "--appendonly", "yes", ...] -> {"appendonly": "yes", ...}
    assert argv[0] == "redis-server" and len(argv) % 2 == 1
    return {argv[i].removeprefix("--"): argv[i + 1] for i in range(1, len(argv), 2)}


def _redis_conf(path: Path) -> dict[str, str]:
    settings = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            settings[key] = value.strip()
    return settings


# What the no-loss promise needs from any Redis deepfactor runs on (deploy/README.md).
PERSISTENCE = {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}


def test_compose_redis_keeps_what_it_acknowledged(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    assert _redis_options(redis["command"]).items() >= PERSISTENCE.items()
    assert "redis-data:/data" in redis["volumes"] and "redis-data" in compose["volumes"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_redis_conf_of_the_systemd_unit_keeps_what_it_acknowledged() -> None:
    assert _redis_conf(DEPLOY / "redis" / "redis.conf").items() >= PERSISTENCE.items()


@pytest.mark.usefixtures("clean_environment")
def test_status_fails_where_the_account_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the healthcheck relies on: no account yet, or no Redis answering, is a non-zero
    exit (port 1 on the loopback refuses at once; the connect wait is cut to a fraction)."""
    monkeypatch.setenv("DEEPFACTOR_BUS__CONNECT_TIMEOUT_S", "0.3")
    probe = ["status", "--out", str(tmp_path), "--redis-url", "redis://127.0.0.1:1/0", "--json"]
    assert main(probe) != 0
    assert "no paper account" in capsys.readouterr().err
    account = {"namespace": "deepfactor-test", "feed": "replay", "starts": 1}
    (tmp_path / "account.json").write_text(json.dumps(account))
    assert main(probe) != 0
    assert "127.0.0.1:1" in capsys.readouterr().err


# -- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append((keyword.upper(), " ".join(arguments.split())))
            pending = ""
    return instructions


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DEPLOY / "Dockerfile")


def _pinned(requirement_prefix: str) -> str:
    pins = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith(requirement_prefix)]
    assert len(pins) == 1, f"pyproject pins {requirement_prefix!r} {len(pins)} times"
    return pins[0]


def test_image_installs_pyprojects_torch_from_the_cpu_index_then_the_package(
    dockerfile: list[tuple[str, str]],
) -> None:
    assert dockerfile[0] == ("FROM", "python:3.11-slim")
    runs = [arguments for keyword, arguments in dockerfile if keyword == "RUN"]
    torch_run = next(i for i, run in enumerate(runs) if "torch==" in run)
    package_run = next(i for i, run in enumerate(runs) if re.search(r"pip install \.(\s|$)", run))
    assert torch_run < package_run, "torch before the package, or pip takes it from PyPI"
    assert f'"{_pinned("torch==")}"' in runs[torch_run]
    assert '--index-url "${TORCH_INDEX}"' in runs[torch_run]
    # The same CPU index the Makefile uses by default.
    makefile_index = re.search(r"^TORCH_INDEX \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert makefile_index is not None
    assert ("ARG", f"TORCH_INDEX={makefile_index[1]}") in dockerfile


def test_image_copies_every_package_and_the_readme(dockerfile: list[tuple[str, str]]) -> None:
    """``pip install .`` finds only what was copied: a new top-level package listed in
    pyproject but not copied would install without it, and the image would fail at import."""
    copied = {
        source.rstrip("/")
        for keyword, arguments in dockerfile
        if keyword == "COPY"
        for source in arguments.split()[:-1]
    }
    packages = {
        p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    needed = packages | {PYPROJECT["project"]["readme"], "pyproject.toml", "deploy/configs"}
    assert needed <= copied
    allowed = {
        line.removeprefix("!").rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert needed <= allowed, "the ignore file keeps a copied path out of the build context"


def test_image_runs_deepfactor_as_a_user_other_than_root(
    dockerfile: list[tuple[str, str]],
) -> None:
    users = [arguments for keyword, arguments in dockerfile if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(keyword == "RUN" and "useradd" in a and users[-1] in a for keyword, a in dockerfile)
    entrypoint = next(arguments for keyword, arguments in dockerfile if keyword == "ENTRYPOINT")
    assert json.loads(entrypoint) == [next(iter(PYPROJECT["project"]["scripts"]))]
    assert ("COPY", f"deploy/configs/ {CONFIG_DIR}/") in dockerfile


# -- systemd ---------------------------------------------------------------------------------

SYSTEMD = DEPLOY / "systemd"


def read_unit(path: Path) -> configparser.ConfigParser:
    """A unit file as configparser reads it: keys kept case-sensitive, no interpolation (units
    use %i). strict: a key given twice is legal in systemd (a list, or the last one wins) but
    these units give each key once, so a repeat is a mistake to flag here."""
    unit = configparser.ConfigParser(
        interpolation=None, strict=True, delimiters=("=",), comment_prefixes=("#", ";")
    )
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keep key case
    unit.read_string(path.read_text(encoding="utf-8"), source=str(path))
    return unit


def _environment(unit: configparser.ConfigParser) -> dict[str, str]:
    pairs = shlex.split(unit["Service"].get("Environment", ""))
    return dict(pair.split("=", 1) for pair in pairs)


def _check_daemon_service(unit: configparser.ConfigParser, arguments: argparse.Namespace) -> None:
    service = unit["Service"]
    assert service["User"] == "deepfactor"
    assert service["WorkingDirectory"] == STATE_DIR
    assert service["EnvironmentFile"] == ENV_FILE
    assert service["Restart"] == "on-failure" and int(service["RestartSec"]) > 0
    assert service["KillSignal"] == "SIGTERM"
    assert 1 <= int(service["TimeoutStopSec"]) <= 120
    # The Redis URL: on the command line, or a default the environment file may override.
    assert arguments.redis_url or _environment(unit).get("DEEPFACTOR_BUS__REDIS_URL")


@pytest.mark.parametrize("service", SERVICES)
def test_template_unit_runs_each_service_through_the_real_parser(service: str) -> None:
    unit = read_unit(SYSTEMD / "deepfactor@.service")
    exec_start = unit["Service"]["ExecStart"]
    assert "%I" not in exec_start, "%I would unescape market-data's '-' into '/'"
    argv = [word.replace("%i", service) for word in shlex.split(exec_start)]
    arguments = parse_executable(argv, f"deepfactor@{service}.service")
    assert (arguments.command, arguments.service) == ("run", service)
    assert arguments.out == RUN_DIR and arguments.config == f"{CONFIG_DIR}/paper.toml"
    _check_daemon_service(unit, arguments)
    assert unit["Unit"]["PartOf"] == "deepfactor.target"


def test_target_starts_every_service_and_redis() -> None:
    target = read_unit(SYSTEMD / "deepfactor.target")
    wanted = set(target["Unit"]["Wants"].split())
    assert wanted == {f"deepfactor@{s}.service" for s in SERVICES} | {"deepfactor-redis.service"}
    assert target["Unit"]["Conflicts"] == "deepfactor-up.service"
    assert target["Install"]["WantedBy"] == "multi-user.target"


def test_up_unit_runs_deepfactor_up_through_the_real_parser() -> None:
    unit = read_unit(SYSTEMD / "deepfactor-up.service")
    arguments = parse_executable(shlex.split(unit["Service"]["ExecStart"]), "deepfactor-up")
    assert arguments.command == "up"
    assert arguments.out == RUN_DIR and arguments.config == f"{CONFIG_DIR}/paper.toml"
    _check_daemon_service(unit, arguments)
    # SIGTERM to the supervisor alone: it stops its children one signal each.
    assert unit["Service"]["KillMode"] == "mixed"
    assert unit["Unit"]["Conflicts"] == "deepfactor.target"


def test_redis_unit_runs_the_shipped_config_in_its_state_folder() -> None:
    unit = read_unit(SYSTEMD / "deepfactor-redis.service")
    binary, config = shlex.split(unit["Service"]["ExecStart"])
    assert Path(binary).name == "redis-server" and config == f"{CONFIG_DIR}/redis.conf"
    state = unit["Service"]["StateDirectory"]
    assert _redis_conf(DEPLOY / "redis" / "redis.conf")["dir"] == f"/var/lib/{state}"


# -- supervisord -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def supervisord() -> configparser.RawConfigParser:
    """supervisord.conf as supervisord reads it (a RawConfigParser with ';' and '#' inline
    comments), strict besides: supervisord lets a repeated key win silently."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=True)
    parser.read_string((DEPLOY / "supervisord.conf").read_text(encoding="utf-8"))
    return parser


def test_supervisord_has_one_program_per_service_in_one_group(
    supervisord: configparser.RawConfigParser,
) -> None:
    programs = [s.removeprefix("program:") for s in supervisord if s.startswith("program:")]
    assert programs == [f"deepfactor-{s}" for s in SERVICES]
    assert supervisord["group:deepfactor"]["programs"].split(",") == programs


@pytest.mark.parametrize("service", SERVICES)
def test_supervisord_program_runs_its_service_through_the_real_parser(
    supervisord: configparser.RawConfigParser, service: str
) -> None:
    program = supervisord[f"program:deepfactor-{service}"]
    # supervisord splits the command the way shlex does.
    arguments = parse_executable(shlex.split(program["command"]), f"program {service}")
    assert (arguments.command, arguments.service) == ("run", service)
    assert arguments.out == RUN_DIR and arguments.config == f"{CONFIG_DIR}/paper.toml"
    assert arguments.redis_url
    assert program["autorestart"] == "unexpected" and program["exitcodes"] == "0"
    assert program["stopsignal"] == "TERM" and 1 <= int(program["stopwaitsecs"]) <= 120
    assert program["redirect_stderr"] == "true" and program["stdout_logfile"].endswith(".log")
    assert program["user"] == "deepfactor" and program["directory"] == STATE_DIR


# -- example configs and the environment file ------------------------------------------------


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DEEPFACTOR_* variable of the machine running the tests reaches the config."""
    for name in list(os.environ):
        if name.startswith("DEEPFACTOR_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize(
    "config", sorted((DEPLOY / "configs").glob("*.toml")), ids=lambda path: path.name
)
def test_every_example_config_passes_config_check(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``deepfactor config check`` runs every check start-up runs (schema, factors, schedule)."""
    assert main(["config", "check", "--config", str(config)]) == 0, capsys.readouterr().err
    assert isinstance(json.loads(capsys.readouterr().out), dict)


def test_live_example_cannot_trade_real_money_as_shipped() -> None:
    """The live example names the exchange broker, yet as shipped it reaches the sandbox only:
    --live is refused, keys come from the environment alone, and the limits are on."""
    import msgspec

    from brokers.ccxt_exchange import API_KEY_ENV, SECRET_ENV
    from engine.config import load_config
    from engine.errors import ConfigError
    from services.runtime.assembly import make_broker

    config = load_config(DEPLOY / "configs" / "live.toml", environ={})
    broker = config.broker
    assert (broker.kind, broker.sandbox, broker.live_confirm) == ("ccxt", True, False)
    keys = {API_KEY_ENV: "test-key", SECRET_ENV: "test-secret"}
    with pytest.raises(ConfigError, match="configured for the sandbox"):
        make_broker(config, live=True, environ=keys)
    real = msgspec.structs.replace(config, broker=msgspec.structs.replace(broker, sandbox=False))
    with pytest.raises(ConfigError, match="live_confirm"):
        make_broker(real, live=True, environ=keys)
    with pytest.raises(ConfigError, match=API_KEY_ENV):
        make_broker(config, live=False, environ={})
    risk = config.risk
    assert risk.enabled and risk.max_order_notional > 0 and risk.price_collar > 0
    assert risk.drawdown_stop > 0 and risk.var_limit > 0


def env_example_lines() -> Iterator[tuple[bool, str, str]]:
    """(commented, NAME, value) for each assignment in deepfactor.env.example, live or shown
    commented out (``# NAME=value``)."""
    for line in (DEPLOY / "deepfactor.env.example").read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"(# ?)?([A-Z][A-Z0-9_]*)=(\S*)", line.strip())
        if match:
            yield bool(match[1]), match[2], match[3]
        else:
            assert not line.strip() or line.startswith("#"), f"not KEY=value: {line!r}"


def test_env_example_holds_no_secret_and_only_real_overrides() -> None:
    from brokers.ccxt_exchange import API_KEY_ENV, SECRET_ENV
    from engine.config import load_config

    assignments = list(env_example_lines())
    shown = {name: (commented, value) for commented, name, value in assignments}
    # The exchange keys are shown, commented out, without a value.
    assert shown[API_KEY_ENV] == (True, "") and shown[SECRET_ENV] == (True, "")
    for commented, name, value in assignments:
        if not commented:
            assert urlsplit(value).password is None, f"{name} carries a password"
        if name.startswith("DEEPFACTOR_") and "__" in name:
            load_config(None, environ={name: value})  # a key the schema knows, a valid value


# -- deploy/README.md ------------------------------------------------------------------------


def readme_commands(text: str) -> Iterator[list[str]]:
    """The ``deepfactor`` command lines of the README's code blocks: a word naming the script
    followed by one of its commands, to the end of the (backslash-joined) line."""
    script = next(iter(PYPROJECT["project"]["scripts"]))
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for index, word in enumerate(words[:-1]):
                if Path(word).name == script and words[index + 1] in COMMANDS:
                    yield words[index + 1 :]


def test_readme_names_every_deploy_file() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    files = [
        path.relative_to(DEPLOY).as_posix()
        for path in DEPLOY.rglob("*")
        if path.is_file() and path.name != "README.md" and "__pycache__" not in path.parts
    ]
    missing = [name for name in files if Path(name).name not in readme]
    assert not missing, f"deploy/README.md does not mention {missing}"


def test_readme_commands_parse_with_the_real_parser() -> None:
    commands = list(readme_commands((DEPLOY / "README.md").read_text(encoding="utf-8")))
    assert len(commands) >= 5, "the README's code blocks lost their deepfactor commands"
    for argv in commands:
        parse_command(argv, "deploy/README.md")
