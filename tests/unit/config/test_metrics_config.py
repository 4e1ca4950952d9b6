"""``[metrics]``: off by default, and a bad value fails at load naming the key."""

from __future__ import annotations

import pytest

from engine.config import load_config
from engine.errors import ConfigError


def test_metrics_are_off_by_default_on_the_loopback():
    metrics = load_config(None, environ={}).metrics
    assert (metrics.enabled, metrics.host, metrics.port, metrics.process_port) == (
        False,
        "127.0.0.1",
        9464,
        0,
    )


def test_metrics_are_enabled_from_the_file_or_the_environment(tmp_path):
    path = tmp_path / "paper.toml"
    path.write_text("[metrics]\nenabled = true\nport = 9500\n")
    assert load_config(path, {}).metrics.enabled
    overridden = load_config(path, {"DEEPFACTOR_METRICS__PORT": "9600"}).metrics
    assert (overridden.enabled, overridden.port) == (True, 9600)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("port = 0", "[metrics] port must be int >= 1, received 0"),
        ("port = 70000", "[metrics] port must be int <= 65535, received 70000"),
        ("process_port = 65536", "[metrics] process_port must be int <= 65535, received 65536"),
        ('host = ""', "[metrics] host must be str of length >= 1, received ''"),
        ("enabled = 1", "[metrics] enabled must be bool, received 1"),
        ("prot = 9000", "[metrics] prot is not a known setting"),
    ],
)
def test_a_bad_metrics_value_names_the_key(tmp_path, setting, message):
    path = tmp_path / "paper.toml"
    path.write_text(f"[metrics]\n{setting}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert str(caught.value) == f"config {path}: {message}"


def test_the_first_port_must_leave_room_for_every_service():
    assert load_config(None, {"DEEPFACTOR_METRICS__PORT": "65528"}).metrics.port == 65528
    with pytest.raises(ConfigError, match=r"\[metrics\] port must be at most 65528.*65529"):
        load_config(None, {"DEEPFACTOR_METRICS__PORT": "65529"})
