"""The command line validates config up front and exits with codes that mean something."""

from __future__ import annotations

import json

from services.commands.cli import EXIT_OK, EXIT_USAGE, main


def test_config_check_prints_the_validated_config_with_secrets_masked(capsys, monkeypatch):
    monkeypatch.setenv("DEEPFACTOR_BUS__REDIS_URL", "redis://:hunter2@db:6379/0")
    monkeypatch.setenv("DEEPFACTOR_BUS__BATCH_SIZE", "32")
    assert main(["config", "check"]) == EXIT_OK
    printed = json.loads(capsys.readouterr().out)
    assert printed["bus"]["batch_size"] == 32
    assert printed["bus"]["redis_url"] == "redis://:***@db:6379/0"


def test_config_check_exits_2_and_names_the_key(capsys, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[bus]\nclaim_idle_ms = -5\n")
    assert main(["config", "check", "--config", str(path)]) == EXIT_USAGE
    error = capsys.readouterr().err
    assert f"config {path}: [bus] claim_idle_ms must be int >= 0, received -5" in error
