"""The factor registry and compute_panel: names, definitions, parameters, windows, volume,
and users' own factors."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from strategies.factors import (
    FACTORS,
    FactorInputs,
    FactorSpec,
    IncrementalFactors,
    compute_panel,
    register_factor,
    register_kernel,
)
from tests.unit.strategies.factor_references import random_inputs

VOLUME_FACTORS = {"volume_trend", "turnover", "amihud", "dollar_volume"}


@pytest.fixture
def registry_guard() -> Iterator[None]:
    """Remove whatever a test registers, so the registry stays the built-in one."""
    before = set(FACTORS)
    yield
    for name in set(FACTORS) - before:
        del FACTORS[name]


def test_library_registers_the_issue_factors_with_one_line_definitions():
    expected = {
        "momentum",
        "momentum_12_1",
        "momentum_6_1",
        "momentum_3_1",
        "reversal",
        "volatility",
        "downside_volatility",
        "beta",
        "idiosyncratic_volatility",
        "skewness",
        "max_return",
        "trend",
        "volume_trend",
        "amihud",
        "dollar_volume",
        "turnover",
    }
    assert expected <= set(FACTORS)
    for name, spec in FACTORS.items():
        assert isinstance(spec, FactorSpec) and spec.name == name
        assert spec.description and "\n" not in spec.description
        assert spec.description == spec.function.__doc__.strip().splitlines()[0]
        assert all(isinstance(v, int) and v >= 0 for v in spec.defaults.values())


def test_momentum_horizons_can_be_asked_for_by_name():
    assert FACTORS["momentum"].defaults == {"lookback": 252, "skip": 21}
    assert FACTORS["momentum_12_1"].defaults == {"lookback": 252, "skip": 21}
    assert FACTORS["momentum_6_1"].defaults == {"lookback": 126, "skip": 21}
    assert FACTORS["momentum_3_1"].defaults == {"lookback": 63, "skip": 21}
    assert FACTORS["reversal"].defaults == {"lookback": 21}
    inputs = random_inputs(n_bars=300, holes=False)
    values = compute_panel(
        [("m6", "momentum_6_1", {}), ("m", "momentum", {"lookback": 126})], inputs
    )
    np.testing.assert_array_equal(values["m6"], values["m"])


def test_exactly_the_volume_factors_need_volume():
    assert {name for name, spec in FACTORS.items() if spec.needs_volume} == VOLUME_FACTORS


@pytest.mark.parametrize("name", sorted(VOLUME_FACTORS))
def test_volume_factor_without_volume_is_refused_naming_the_factor(name):
    inputs = random_inputs()
    close_only = FactorInputs(
        close=inputs.close, open=inputs.open, high=inputs.high, low=inputs.low, volume=None
    )
    with pytest.raises(ValueError, match=f"factor '{name}' needs volume"):
        compute_panel([("label", name, {})], close_only)
    with pytest.raises(ValueError, match=f"'{name}' needs volume"):
        FACTORS[name].function(close_only)


def test_price_factors_run_without_volume():
    inputs = random_inputs()
    close_only = FactorInputs(
        close=inputs.close, open=inputs.open, high=inputs.high, low=inputs.low
    )
    price_factors = [
        (n, n, {"lookback": 20})
        for n, s in FACTORS.items()
        if not s.needs_volume and "skip" not in s.defaults
    ]
    values = compute_panel(price_factors, close_only)
    assert all(np.isfinite(v[-1]).any() for v in values.values())


@pytest.mark.parametrize(
    ("name", "params", "window"),
    [
        ("momentum", {}, 253),
        ("momentum", {"lookback": 20, "skip": 5}, 21),
        ("momentum_3_1", {}, 64),
        ("reversal", {"lookback": 5}, 6),
        ("volatility", {}, 64),
        ("beta", {}, 253),
        ("trend", {"lookback": 50}, 50),
        ("turnover", {}, 252),
        ("amihud", {}, 22),
        ("dollar_volume", {}, 21),
        ("range_volatility", {}, 21),
    ],
)
def test_window_is_the_bars_the_factor_reads(name, params, window):
    assert FACTORS[name].window(**params) == window


@pytest.mark.parametrize("name", sorted(FACTORS))
def test_window_is_exact_one_bar_short_gives_nan_and_older_bars_do_not_matter(name):
    inputs = random_inputs(n_bars=300, holes=False)
    window = FACTORS[name].window()
    values = FACTORS[name].function(inputs)
    assert np.isnan(values[window - 2]).all() and np.isfinite(values[window - 1]).all()
    # Every bar before the last window changes, by a different factor per value.
    altered = {n: getattr(inputs, n).copy() for n in ("close", "open", "high", "low", "volume")}
    rng = np.random.default_rng(5)
    for array in altered.values():
        array[:-window] *= rng.uniform(0.5, 2.0, array[:-window].shape)
    changed = FACTORS[name].function(FactorInputs(**altered))
    np.testing.assert_allclose(changed[-1], values[-1], rtol=1e-12)


def test_resolve_fills_defaults_and_names_the_factor_and_the_bad_parameter():
    assert FACTORS["momentum"].resolve(skip=5) == {"lookback": 252, "skip": 5}
    with pytest.raises(ValueError, match=r"factor 'momentum': unknown parameter 'lokback'"):
        FACTORS["momentum"].resolve(lokback=20)
    with pytest.raises(ValueError, match=r"factor 'reversal': unknown parameter 'skip'"):
        FACTORS["reversal"].resolve(skip=1)
    with pytest.raises(
        ValueError,
        match=r"factor 'momentum': parameter 'skip' must be below "
        r"lookback \(20\), received 20",
    ):
        FACTORS["momentum"].resolve(lookback=20, skip=20)
    with pytest.raises(
        ValueError,
        match=r"factor 'volatility': parameter 'lookback' must be "
        r">= 2, received 0",
    ):
        FACTORS["volatility"].resolve(lookback=0)
    with pytest.raises(ValueError, match=r"factor 'trend': parameter 'lookback' must be >= 1"):
        FACTORS["trend"].resolve(lookback=-3)
    with pytest.raises(
        ValueError,
        match=r"factor 'beta': parameter 'lookback' must be an "
        r"integer, received 2.5",
    ):
        FACTORS["beta"].resolve(lookback=2.5)
    with pytest.raises(
        ValueError,
        match=r"factor 'turnover': parameter 'lookback' must be "
        r"below long",
    ):
        FACTORS["turnover"].resolve(lookback=30, long=30)
    with pytest.raises(ValueError, match="'momentum': unknown parameter 'window'"):
        FACTORS["momentum"].window(window=3)


def test_compute_panel_refuses_unknown_names_and_repeated_labels():
    inputs = random_inputs()
    with pytest.raises(ValueError, match=r"factor 'x': unknown factor name 'astrology'"):
        compute_panel([("x", "astrology", {})], inputs)
    with pytest.raises(ValueError, match="label 'a' is used twice"):
        compute_panel([("a", "reversal", {}), ("a", "trend", {})], inputs)
    with pytest.raises(ValueError, match="factor 'reversal': unknown parameter 'skip'"):
        compute_panel([("a", "reversal", {"skip": 2})], inputs)


def test_compute_panel_returns_independent_arrays_for_every_label():
    inputs = random_inputs()
    values = compute_panel([("a", "max_return", {}), ("b", "max_return", {})], inputs)
    assert values["a"].shape == inputs.shape
    values["a"][:] = 0.0
    assert np.isnan(values["b"][0]).all()


def test_factor_inputs_check_shapes():
    close = np.ones((5, 2))
    with pytest.raises(
        ValueError, match=r"FactorInputs: high has shape \(5, 3\), expected \(5, 2\)"
    ):
        FactorInputs(close=close, open=close, high=np.ones((5, 3)), low=close)
    with pytest.raises(ValueError, match="close must be 2-D"):
        FactorInputs(close=np.ones(5), open=close, high=close, low=close)


def test_user_factor_registered_with_the_decorator_computes_on_both_paths(registry_guard):
    @register_factor("range_over_close", lookback=3)
    def range_over_close(inputs: FactorInputs, lookback: int = 3) -> np.ndarray:
        """Mean of (high - low) / close over the last lookback bars."""
        ratio = (inputs.high - inputs.low) / inputs.close
        out = np.full_like(ratio, np.nan)
        for t in range(lookback - 1, ratio.shape[0]):
            out[t] = ratio[t - lookback + 1 : t + 1].mean(axis=0)
        return out

    spec = FACTORS["range_over_close"]
    assert spec.description == "Mean of (high - low) / close over the last lookback bars."
    assert spec.defaults == {"lookback": 3} and not spec.needs_volume
    assert spec.window() == 4 and spec.window(lookback=5) == 6  # the default rule: largest + 1
    inputs = random_inputs(n_bars=40, holes=False)
    full = compute_panel([("r", "range_over_close", {"lookback": 4})], inputs)["r"]
    np.testing.assert_allclose(full[10], ((inputs.high - inputs.low) / inputs.close)[7:11].mean(0))
    incremental = IncrementalFactors([("r", "range_over_close", {"lookback": 4})])
    symbols = tuple(f"S{i}" for i in range(inputs.shape[1]))
    for t in range(inputs.shape[0]):
        row = incremental.update(
            symbols, inputs.open[t], inputs.high[t], inputs.low[t], inputs.close[t], None
        )
        np.testing.assert_allclose(row[0], full[t], rtol=1e-12)


def test_user_kernel_runs_incrementally_like_the_built_ins(registry_guard):
    @register_kernel("mean_volume", window=lambda lookback: lookback, needs_volume=True, lookback=5)
    def mean_volume(data, lookback: int = 5) -> np.ndarray:
        """Mean volume over the last lookback bars."""
        return data.window_sum("volume", lookback) / lookback

    inputs = random_inputs()
    full = compute_panel([("v", "mean_volume", {})], inputs)["v"]
    incremental = IncrementalFactors([("v", "mean_volume", {})])
    symbols = tuple(f"S{i}" for i in range(inputs.shape[1]))
    for t in range(inputs.shape[0]):
        row = incremental.update(
            symbols,
            inputs.open[t],
            inputs.high[t],
            inputs.low[t],
            inputs.close[t],
            inputs.volume[t],
        )
        np.testing.assert_array_equal(row[0], full[t])


def test_registering_a_taken_name_or_bad_defaults_is_refused(registry_guard):
    with pytest.raises(ValueError, match="factor 'momentum' is already registered"):
        register_factor("momentum", lookback=3)(lambda inputs, lookback=3: inputs.close)
    with pytest.raises(
        ValueError,
        match=r"factor 'bad': parameter 'lookback' must be >= 1, "
        r"received 0",
    ):
        register_factor("bad", lookback=0)(lambda inputs, lookback=0: inputs.close)
    with pytest.raises(ValueError, match=r"factor 'typo': .* takes no parameter 'lookbak'"):
        register_factor("typo", lookbak=3)(lambda inputs, lookback=3: inputs.close)
    assert "bad" not in FACTORS and "typo" not in FACTORS


def test_factor_spec_exposes_the_parameter_names_in_order():
    assert FACTORS["momentum"].parameters == ("lookback", "skip")
    assert FACTORS["turnover"].parameters == ("lookback", "long")
