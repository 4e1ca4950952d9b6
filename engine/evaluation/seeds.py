"""The spread of a strategy's figures across training seeds.

One seed of a neural network is one draw: a figure that changes sign from seed to seed is not a
finding. So the evaluation reports each figure's mean and its spread over several seeds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.evaluation.performance import StrategyMetrics


@dataclass(frozen=True)
class SeedSpread:
    """Mean, standard deviation (ddof=1), minimum and maximum of a figure over ``seeds`` runs."""

    mean: float
    std: float
    minimum: float
    maximum: float
    seeds: int


def spread(values: Sequence[float]) -> SeedSpread:
    """Return the spread of one figure over seeds; a spread needs at least two of them."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or len(array) < 2:
        raise ValueError(f"spread: needs at least 2 seeds, received {array.size}")
    return SeedSpread(
        mean=float(array.mean()),
        std=float(array.std(ddof=1)),
        minimum=float(array.min()),
        maximum=float(array.max()),
        seeds=len(array),
    )


def spread_across_seeds(runs: Sequence[StrategyMetrics]) -> dict[str, SeedSpread]:
    """Return the spread of every numeric figure of ``runs`` (one per seed), by field name.

    Figures that some run lacks (None: an input it was not given) and flags are left out; the
    VaR test contributes its breach rate and p-value.
    """
    if len(runs) < 2:
        raise ValueError(f"spread_across_seeds: needs at least 2 seeds, received {len(runs)}")
    columns: dict[str, list[float]] = {}
    for field in dataclasses.fields(StrategyMetrics):
        column = [getattr(run, field.name) for run in runs]
        if all(isinstance(value, int | float) and not isinstance(value, bool) for value in column):
            columns[field.name] = column
    backtests = [run.var_backtest for run in runs]
    if all(backtest is not None for backtest in backtests):
        columns["var_breach_rate"] = [backtest.breach_rate for backtest in backtests]
        columns["var_kupiec_p_value"] = [backtest.p_value for backtest in backtests]
    return {name: spread(column) for name, column in columns.items()}
