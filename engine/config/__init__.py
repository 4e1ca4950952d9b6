"""Typed configuration: one TOML file, environment overrides, validated once at start-up."""

from engine.config.loader import ENV_PREFIX, load_config
from engine.config.schema import BusConfig, Config, LogConfig, RunConfig

__all__ = ["ENV_PREFIX", "BusConfig", "Config", "LogConfig", "RunConfig", "load_config"]
