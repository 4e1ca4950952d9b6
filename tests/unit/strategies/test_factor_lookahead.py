"""No look-ahead: the exposures at bar t are the same whatever happens after t, for every
registered factor."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.factors import FACTORS, FactorInputs, compute_panel
from tests.unit.strategies.factor_references import SMALL_PARAMS, random_inputs

DECISION_BARS = (60, 140, 261, 290)


def with_garbage_after(inputs: FactorInputs, t: int, seed: int) -> FactorInputs:
    """``inputs`` with every bar after t replaced: random prices and volumes, zeros, negatives,
    NaN and infinities."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name in ("close", "open", "high", "low", "volume"):
        array = getattr(inputs, name).copy()
        future = array[t + 1 :]
        future[:] = rng.uniform(-1e6, 1e6, future.shape)
        future[::3] = np.inf
        future[1::5] = np.nan
        future[2::7] = 0.0
        arrays[name] = array
    return FactorInputs(**arrays)


@pytest.mark.parametrize("params", ["defaults", "short"])
@pytest.mark.parametrize("name", sorted(FACTORS))
def test_exposures_up_to_t_ignore_every_bar_after_t(name, params):
    inputs = random_inputs(n_bars=300)
    parameters = {} if params == "defaults" else SMALL_PARAMS.get(name, {})
    honest = compute_panel([(name, name, parameters)], inputs)[name]
    for seed, t in enumerate(DECISION_BARS):
        poisoned = compute_panel([(name, name, parameters)], with_garbage_after(inputs, t, seed))[
            name
        ]
        np.testing.assert_array_equal(poisoned[: t + 1], honest[: t + 1])
    # Not vacuous: the last decision bar has values to protect.
    assert np.isfinite(honest[DECISION_BARS[-1]]).any()


@pytest.mark.parametrize("name", sorted(FACTORS))
def test_exposures_on_a_truncated_history_equal_the_full_history_rows(name):
    inputs = random_inputs(n_bars=300)
    full = compute_panel([(name, name, {})], inputs)[name]
    t = DECISION_BARS[-1]
    truncated = FactorInputs(
        close=inputs.close[: t + 1],
        open=inputs.open[: t + 1],
        high=inputs.high[: t + 1],
        low=inputs.low[: t + 1],
        volume=inputs.volume[: t + 1],
    )
    np.testing.assert_array_equal(compute_panel([(name, name, {})], truncated)[name], full[: t + 1])
