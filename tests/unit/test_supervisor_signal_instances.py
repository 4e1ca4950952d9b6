"""``[supervisor] signal_instances``: ``deepfactor up`` starts that many signal children, each
a member of the ``signal`` group under its own stable instance name."""

from __future__ import annotations

import pytest

from engine.config import load_config
from engine.errors import ConfigError
from services.commands.cli import build_parser
from services.runtime.supervisor import run_commands

SERVICES = ["market-data", "factor-update", "signal", "rebalance"]


def test_each_signal_child_runs_signal_under_its_own_instance_name() -> None:
    specs = run_commands(
        SERVICES,
        common=["--out", "d", "--instance", "box"],
        replay=["--synthetic"],
        fresh=False,
        signal_instances=3,
        instance="box",
    )
    assert [s.name for s in specs] == [
        "market-data",
        "factor-update",
        "signal",
        "signal-2",
        "signal-3",
        "rebalance",
    ]
    parser = build_parser()
    parsed = {s.name: parser.parse_args(list(s.argv[3:])) for s in specs}  # after "-m cli"
    assert {name: (a.service, a.instance) for name, a in parsed.items() if "signal" in name} == {
        "signal": ("signal", "box"),
        "signal-2": ("signal", "box-2"),
        "signal-3": ("signal", "box-3"),
    }
    assert all(s.first_argv is None for s in specs if s.name.startswith("signal"))


def test_one_signal_instance_is_the_plain_command_and_the_host_names_the_others() -> None:
    one = run_commands(SERVICES, common=["--out", "d"], replay=[], fresh=False)
    assert [s.name for s in one] == SERVICES
    assert "--instance" not in one[2].argv
    two = run_commands(SERVICES, common=["--out", "d"], replay=[], fresh=False, signal_instances=2)
    extra = two[3]
    assert extra.name == "signal-2" and extra.argv[-2] == "--instance"
    assert extra.argv[-1].endswith("-2") and len(extra.argv[-1]) > 2


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_signal_instances_must_be_a_positive_count(value: str) -> None:
    with pytest.raises(ConfigError, match=r"\[supervisor\] signal_instances"):
        load_config(None, {"DEEPFACTOR_SUPERVISOR__SIGNAL_INSTANCES": value})
    assert load_config(None, {}).supervisor.signal_instances == 1


def test_each_extra_signal_child_gets_a_metrics_port_after_the_eight_services() -> None:
    specs = {
        s.name: s
        for s in run_commands(
            SERVICES,
            common=["--out", "d"],
            replay=[],
            fresh=False,
            signal_instances=3,
            instance="box",
            metrics_port=9464,
        )
    }
    # signal itself keeps the rule's port (9466); signal-2 and signal-3 follow archive (9471).
    assert specs["signal"].env == {}
    assert specs["signal-2"].env == {"DEEPFACTOR_METRICS__PROCESS_PORT": "9472"}
    assert specs["signal-3"].env == {"DEEPFACTOR_METRICS__PROCESS_PORT": "9473"}
    ports = {9464 + i for i in range(8)} | {9472, 9473}
    assert len(ports) == 10  # no two processes of one host on one port
    config = load_config(
        None,
        environ={
            "DEEPFACTOR_METRICS__PROCESS_PORT": specs["signal-2"].env[
                "DEEPFACTOR_METRICS__PROCESS_PORT"
            ]
        },
    )
    assert config.metrics.port_of("signal") == 9472


def test_metrics_ports_must_leave_room_for_every_signal_child() -> None:
    environ = {
        "DEEPFACTOR_METRICS__ENABLED": "true",
        "DEEPFACTOR_METRICS__PORT": "65528",
        "DEEPFACTOR_SUPERVISOR__SIGNAL_INSTANCES": "2",
    }
    with pytest.raises(ConfigError, match=r"\[metrics\] port 65528 leaves no port for signal"):
        load_config(None, environ=environ)
    assert load_config(None, environ={**environ, "DEEPFACTOR_METRICS__PORT": "65527"})
