"""The models' inputs, read from FactorSnapshots alone: training (the snapshots the factor
service publishes in a backtest) and serving (the same snapshots, live) see the same numbers.

Per period, for each factor: its realised rank IC and its quintile long-short return since the
previous snapshot; then the market state: the universe's return, volatility, drawdown,
breadth and the cross-sectional dispersion of the period's returns. A missing value (a
factor not computable yet) reads as 0: no evidence either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.events import FactorSnapshot

MARKET_FEATURES = (
    "market_return",
    "market_volatility",
    "market_drawdown",
    "breadth",
    "dispersion",
)


def feature_names(factors: Sequence[str]) -> tuple[str, ...]:
    """The feature vector's layout for ``factors``: ICs, long-short returns, market state."""
    return (
        *(f"ic:{f}" for f in factors),
        *(f"ls:{f}" for f in factors),
        *MARKET_FEATURES,
    )


def _value(mapping: dict, key: str) -> float:
    value = mapping.get(key)
    return 0.0 if value is None or value != value else float(value)


def snapshot_features(snapshot: FactorSnapshot, factors: Sequence[str]) -> np.ndarray:
    """Return the feature vector (``feature_names(factors)``) of one snapshot."""
    ic = [_value(snapshot.factor_ic, f) for f in factors]
    spread = [_value(snapshot.factor_returns, f) for f in factors]
    market = [_value(snapshot.market_state, name) for name in MARKET_FEATURES]
    return np.array(ic + spread + market, dtype=np.float64)


def ic_columns(factors: Sequence[str]) -> slice:
    """Where the factors' realised ICs sit in the feature vector."""
    return slice(0, len(factors))
