"""Config is validated once, and every error names the file, the key and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import Config, load_config
from engine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deepfactor.toml"
    path.write_text(text)
    return path


def test_no_file_gives_the_defaults():
    assert load_config(None, environ={}) == Config()


@pytest.mark.parametrize(
    "example", sorted((ROOT / "deploy" / "configs").glob("*.toml")), ids=lambda p: p.name
)
def test_shipped_example_configs_load(example):
    assert isinstance(load_config(example, environ={}), Config)


def test_file_values_are_typed_and_frozen(tmp_path):
    config = load_config(write(tmp_path, "[bus]\nbatch_size = 64\n[log]\nlevel = 'debug'\n"), {})
    assert config.bus.batch_size == 64 and config.log.level == "debug"
    with pytest.raises(AttributeError):
        config.bus.batch_size = 1  # type: ignore[misc]


def test_environment_overrides_file_with_typed_values(tmp_path):
    path = write(tmp_path, "[bus]\nbatch_size = 64\n")
    config = load_config(
        path,
        {
            "DEEPFACTOR_BUS__BATCH_SIZE": "128",
            "DEEPFACTOR_RUN__NAMESPACE": "paper-eu",
            "UNRELATED": "x",
        },
    )
    assert config.bus.batch_size == 128 and config.run.namespace == "paper-eu"


def test_out_of_range_value_names_file_key_expectation_and_value(tmp_path):
    path = write(tmp_path, "[bus]\nmax_deliveries = 0\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert str(caught.value) == (
        f"config {path}: [bus] max_deliveries must be int >= 1, received 0"
    )


def test_wrong_type_from_environment_names_the_variable():
    with pytest.raises(
        ConfigError,
        match=r"\[bus\] block_ms must be int, received 'soon' "
        r"\(from environment DEEPFACTOR_BUS__BLOCK_MS\)",
    ):
        load_config(None, {"DEEPFACTOR_BUS__BLOCK_MS": "soon"})


def test_choice_lists_the_allowed_values(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"\[log\] level must be one of 'debug', 'info', "
        r"'warning', 'error', received 'loud'",
    ):
        load_config(write(tmp_path, "[log]\nlevel = 'loud'\n"), {})


def test_unknown_key_and_unknown_section_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"\[bus\] batchsize is not a known setting"):
        load_config(write(tmp_path, "[bus]\nbatchsize = 5\n"), {})
    with pytest.raises(ConfigError, match=r"\[risky\] is not a known setting"):
        load_config(write(tmp_path, "[risky]\nx = 1\n"), {})


def test_missing_file_and_bad_toml_are_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml: file not found"):
        load_config(tmp_path / "nope.toml", {})
    with pytest.raises(ConfigError, match="deepfactor.toml: not valid TOML"):
        load_config(write(tmp_path, "[bus\n"), {})


def test_password_in_file_is_refused_but_accepted_from_environment(tmp_path):
    path = write(tmp_path, "[bus]\nredis_url = 'redis://:hunter2@db:6379/0'\n")
    with pytest.raises(ConfigError, match="DEEPFACTOR_BUS__REDIS_URL") as caught:
        load_config(path, {})
    assert "hunter2" not in str(caught.value)
    config = load_config(None, {"DEEPFACTOR_BUS__REDIS_URL": "rediss://:hunter2@db:6380/0"})
    assert config.bus.redis_url.startswith("rediss://")


def test_redis_url_scheme_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="redis_url must start with redis://"):
        load_config(write(tmp_path, "[bus]\nredis_url = 'http://db'\n"), {})


def test_risk_model_choices_and_factor_count_are_checked_by_key(tmp_path):
    config = load_config(
        write(tmp_path, "[portfolio]\nrisk_model = 'ledoit-wolf'\nrisk_factors = 15\n"), {}
    )
    assert config.portfolio.risk_model == "ledoit-wolf" and config.portfolio.risk_factors == 15
    assert Config().portfolio.risk_model == "pca"
    with pytest.raises(
        ConfigError,
        match=r"\[portfolio\] risk_model must be one of 'pca', 'ledoit-wolf', received 'PCA'",
    ):
        load_config(write(tmp_path, "[portfolio]\nrisk_model = 'PCA'\n"), {})
    with pytest.raises(
        ConfigError, match=r"\[portfolio\] risk_factors must be int >= 1, received 0"
    ):
        load_config(write(tmp_path, "[portfolio]\nrisk_factors = 0\n"), {})
