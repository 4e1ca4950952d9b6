"""Typed configuration: one TOML file, environment overrides, validated once at start-up."""

from engine.config.loader import ENV_PREFIX, load_config
from engine.config.schema import (
    BrokerConfig,
    BusConfig,
    Config,
    FactorConfig,
    LogConfig,
    MarketConfig,
    MetricsConfig,
    PaperConfig,
    PortfolioConfig,
    RiskConfig,
    RunConfig,
    ScheduleConfig,
    StrategyConfig,
)

__all__ = [
    "ENV_PREFIX",
    "BrokerConfig",
    "BusConfig",
    "Config",
    "FactorConfig",
    "LogConfig",
    "MarketConfig",
    "MetricsConfig",
    "PaperConfig",
    "PortfolioConfig",
    "RiskConfig",
    "RunConfig",
    "ScheduleConfig",
    "StrategyConfig",
    "load_config",
]
