"""Factors match a per-asset loop, need exactly their window, and never read the future."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from strategies.factors import FACTORS, FactorSpec, compute_factor
from strategies.factors.basic import low_volatility, momentum, reversal

RNG_SEED = 20240601


def random_closes(n_bars: int = 60, n_assets: int = 6, seed: int = RNG_SEED) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, (n_bars, n_assets)), axis=0))


# Straightforward references: one asset at a time, decision bar t counted from the start.
def momentum_by_loop(close: np.ndarray, lookback: int, skip: int) -> list[float]:
    t = close.shape[0] - 1
    return [close[t - skip, i] / close[t - lookback, i] - 1.0 for i in range(close.shape[1])]


def reversal_by_loop(close: np.ndarray, lookback: int) -> list[float]:
    t = close.shape[0] - 1
    return [-(close[t, i] / close[t - lookback, i] - 1.0) for i in range(close.shape[1])]


def low_volatility_by_loop(close: np.ndarray, lookback: int) -> list[float]:
    t = close.shape[0] - 1
    out = []
    for i in range(close.shape[1]):
        log_returns = [math.log(close[k, i] / close[k - 1, i])
                       for k in range(t - lookback + 1, t + 1)]
        out.append(-statistics.stdev(log_returns))
    return out


CASES = [
    ("momentum", {"lookback": 20, "skip": 5}, momentum_by_loop),
    ("momentum", {"lookback": 12, "skip": 0}, momentum_by_loop),
    ("reversal", {"lookback": 5}, reversal_by_loop),
    ("low_volatility", {"lookback": 20}, low_volatility_by_loop),
]
IDS = [f"{name}-{'-'.join(map(str, params.values()))}" for name, params, _ in CASES]


@pytest.mark.parametrize(("name", "parameters", "reference"), CASES, ids=IDS)
def test_factor_matches_a_per_asset_loop_on_random_closes(name, parameters, reference):
    close = random_closes()
    np.testing.assert_allclose(compute_factor(name, close, **parameters),
                               reference(close, **parameters), rtol=1e-12)


def test_momentum_on_a_known_series_is_the_skipped_return():
    close = np.arange(1.0, 11.0)[:, None]  # 1, 2, ..., 10
    # lookback 6 -> close 6 bars back is 4; skip 2 -> close 2 bars back is 8.
    assert momentum(close, lookback=6, skip=2)[0] == pytest.approx(8 / 4 - 1)


def test_reversal_is_minus_the_recent_return():
    close = np.array([[10.0, 10.0], [11.0, 9.0], [12.0, 8.0]])
    np.testing.assert_allclose(reversal(close, lookback=2), [-0.2, 0.2])


def test_low_volatility_of_a_constant_growth_asset_is_zero_and_higher_than_a_noisy_one():
    close = np.column_stack([1.01 ** np.arange(30), 100 + 10 * (-1.0) ** np.arange(30)])
    values = low_volatility(close, lookback=20)
    assert values[0] == pytest.approx(0.0, abs=1e-12)
    assert values[0] > values[1]


@pytest.mark.parametrize(("name", "parameters", "reference"), CASES, ids=IDS)
def test_factor_is_nan_for_every_asset_when_history_is_one_bar_short(name, parameters, reference):
    needed = FACTORS[name].window(**parameters)
    close = random_closes(n_bars=needed + 10)
    short = compute_factor(name, close[: needed - 1], **parameters)
    assert short.shape == (close.shape[1],) and np.isnan(short).all()
    enough = compute_factor(name, close[:needed], **parameters)
    assert np.isfinite(enough).all()


@pytest.mark.parametrize("name", sorted(FACTORS))
def test_asset_missing_the_bar_a_factor_reads_is_nan_and_others_are_not(name):
    close = random_closes()
    close[-21, 2] = np.nan  # the bar ``lookback`` bars back: read by every factor
    parameters = {"lookback": 20, "skip": 2} if name == "momentum" else {"lookback": 20}
    values = compute_factor(name, close, **parameters)
    assert np.isnan(values[2])
    assert np.isfinite(np.delete(values, 2)).all()


@pytest.mark.parametrize(("name", "parameters", "reference"), CASES, ids=IDS)
def test_factor_reads_no_row_after_the_decision_bar(name, parameters, reference):
    close = random_closes(n_bars=80)
    start = FACTORS[name].window(**parameters)
    for t in range(start - 1, close.shape[0]):
        honest = compute_factor(name, close[: t + 1].copy(), **parameters)
        # The same window, cut out of an array whose future rows are poisoned.
        poisoned = close.copy()
        poisoned[t + 1:] = np.inf
        poisoned[t + 1::2] = -1.0
        np.testing.assert_array_equal(compute_factor(name, poisoned[: t + 1], **parameters),
                                      honest)
        # And the value at bar t equals the reference evaluated on history up to t only.
        np.testing.assert_allclose(honest, reference(close[: t + 1], **parameters), rtol=1e-12)


@pytest.mark.parametrize(("name", "parameters", "reference"), CASES, ids=IDS)
def test_factor_reads_no_row_before_its_window(name, parameters, reference):
    close = random_closes(n_bars=80)
    window = FACTORS[name].window(**parameters)
    altered = close.copy()
    altered[:-window] *= 3.7  # rows older than the window must not matter
    np.testing.assert_allclose(compute_factor(name, altered, **parameters),
                               compute_factor(name, close[-window:], **parameters), rtol=1e-12)


def test_factor_spec_window_is_the_longest_parameter_plus_the_decision_bar():
    assert FACTORS["momentum"].window(lookback=252, skip=21) == 253
    assert FACTORS["reversal"].window(lookback=5) == 6
    assert FACTORS["low_volatility"].window(lookback=20) == 21
    assert FactorSpec(momentum, ()).window() == 1


def test_registry_lists_the_three_factors_with_their_parameters():
    assert {name: spec.parameters for name, spec in FACTORS.items()} == {
        "momentum": ("lookback", "skip"),
        "reversal": ("lookback",),
        "low_volatility": ("lookback",),
    }
