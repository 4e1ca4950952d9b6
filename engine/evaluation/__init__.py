"""Statistics that compare strategies' backtests: figures, regimes, seeds and tests.

Pure functions of return series and equity curves, for ``deepfactor evaluate``; the public
names of the modules are re-exported here.
"""

from engine.evaluation.performance import (
    DrawdownDuration,
    StrategyMetrics,
    drawdown_duration,
    metrics_by_regime,
    strategy_metrics,
)
from engine.evaluation.regimes import (
    BEAR,
    BULL,
    HIGH_VOLATILITY,
    REGIMES,
    RegimeLabels,
    equal_weight_index_returns,
    label_regimes,
)
from engine.evaluation.seeds import SeedSpread, spread, spread_across_seeds
from engine.evaluation.sharpe_tests import (
    BOOTSTRAP_METHODS,
    BootstrapMethod,
    SharpeBootstrap,
    SharpeDifference,
    bootstrap_sharpe_difference,
    jobson_korkie_memmel,
)
from engine.evaluation.var_backtest import (
    KupiecResult,
    VarBreaches,
    count_var_breaches,
    kupiec_pof,
    kupiec_test,
)

__all__ = [
    "BEAR",
    "BOOTSTRAP_METHODS",
    "BULL",
    "HIGH_VOLATILITY",
    "REGIMES",
    "BootstrapMethod",
    "DrawdownDuration",
    "KupiecResult",
    "RegimeLabels",
    "SeedSpread",
    "SharpeBootstrap",
    "SharpeDifference",
    "StrategyMetrics",
    "VarBreaches",
    "bootstrap_sharpe_difference",
    "count_var_breaches",
    "drawdown_duration",
    "equal_weight_index_returns",
    "jobson_korkie_memmel",
    "kupiec_pof",
    "kupiec_test",
    "label_regimes",
    "metrics_by_regime",
    "spread",
    "spread_across_seeds",
    "strategy_metrics",
]
