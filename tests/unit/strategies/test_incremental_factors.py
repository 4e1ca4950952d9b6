"""IncrementalFactors fed one bar at a time equals compute_panel on the whole history, for every
factor, while symbols list late, skip bars, delist and arrive in any order."""

from __future__ import annotations

import numpy as np
import pytest

from engine.data import synthetic_panel
from strategies.factors import FACTORS, FactorInputs, IncrementalFactors, compute_panel
from tests.unit.strategies.factor_references import SMALL_PARAMS

N_ASSETS, N_BARS = 12, 420
LATE, LISTED_AT = 3, 150  # absent from every bar set before LISTED_AT
SKIPPER, SKIPPED_BAR = 5, 300  # absent from one bar set
NAN_ASSET, NAN_BAR = 7, 200  # present in the bar set with NaN values
DELISTED, LAST_BAR = 9, 380  # absent from every bar set after LAST_BAR


def market() -> tuple[FactorInputs, tuple[str, ...], list[list[int]]]:
    """Synthetic bars with holes, the symbols, and which assets each bar set carries (in a
    shuffled order)."""
    panel = synthetic_panel(N_ASSETS, N_BARS, seed=11)
    arrays = {
        name: getattr(panel, name).copy() for name in ("close", "open", "high", "low", "volume")
    }
    present = np.ones((N_BARS, N_ASSETS), dtype=bool)
    present[:LISTED_AT, LATE] = False
    present[SKIPPED_BAR, SKIPPER] = False
    present[LAST_BAR + 1 :, DELISTED] = False
    for array in arrays.values():
        array[~present] = np.nan
        array[NAN_BAR, NAN_ASSET] = np.nan
    rng = np.random.default_rng(0)
    carried = [
        list(rng.permutation(np.flatnonzero(present[t])))
        if t % 4
        else list(np.flatnonzero(present[t]))
        for t in range(N_BARS)
    ]
    return FactorInputs(**arrays), panel.symbols, carried


def feed_and_compare(requests, inputs, symbols, carried) -> int:
    full = compute_panel(requests, inputs)
    incremental = IncrementalFactors(requests)
    assert incremental.labels == tuple(label for label, _, _ in requests)
    compared = 0
    for t, assets in enumerate(carried):
        exposures = incremental.update(
            tuple(symbols[i] for i in assets),
            inputs.open[t, assets],
            inputs.high[t, assets],
            inputs.low[t, assets],
            tuple(inputs.close[t, assets]),
            inputs.volume[t, assets],
        )
        columns = [symbols.index(s) for s in incremental.symbols]
        assert exposures.shape == (len(requests), len(incremental.symbols))
        for row, label in enumerate(incremental.labels):
            expected = full[label][t, columns]
            np.testing.assert_array_equal(
                np.isnan(exposures[row]), np.isnan(expected), err_msg=f"{label} at bar {t}"
            )
            np.testing.assert_allclose(
                exposures[row], expected, rtol=1e-9, atol=0, err_msg=f"{label} at bar {t}"
            )
            compared += int(np.isfinite(expected).sum())
    assert incremental.n_bars == len(carried)
    return compared


def test_every_factor_with_defaults_equals_the_full_panel_at_every_bar():
    inputs, symbols, carried = market()
    requests = [(name, name, {}) for name in FACTORS]
    assert feed_and_compare(requests, inputs, symbols, carried) > 50_000


def test_every_factor_with_short_windows_equals_the_full_panel_across_many_blocks():
    inputs, symbols, carried = market()
    requests = [(f"{name}_short", name, SMALL_PARAMS[name]) for name in FACTORS]
    assert feed_and_compare(requests, inputs, symbols, carried) > 50_000


def test_universe_grows_in_order_of_first_appearance_and_the_newcomer_has_no_history():
    incremental = IncrementalFactors([("rev", "reversal", {"lookback": 1})])
    first = incremental.update(("A", "B"), (1, 1), (1, 1), (1, 1), (10.0, 20.0), None)
    assert incremental.symbols == ["A", "B"] and first.shape == (1, 2)
    second = incremental.update(("C", "A"), (1, 1), (1, 1), (1, 1), (5.0, 11.0), None)
    assert incremental.symbols == ["A", "B", "C"]
    # A has two bars: reversal = -(11/10 - 1); B is absent this bar; C has no history yet.
    np.testing.assert_allclose(second[0, 0], -0.1)
    assert np.isnan(second[0, 1]) and np.isnan(second[0, 2])


def test_a_bar_without_volume_is_refused_when_a_factor_needs_it_and_nothing_is_appended():
    incremental = IncrementalFactors(
        [
            ("amihud", "amihud", {"lookback": 2}),
            ("dv", "dollar_volume", {}),
            ("rev", "reversal", {}),
        ]
    )
    with pytest.raises(ValueError, match=r"factors \['amihud', 'dv'\] need volume"):
        incremental.update(("A",), (1.0,), (1.0,), (1.0,), (1.0,), None)
    assert incremental.n_bars == 0 and incremental.symbols == []
    price_only = IncrementalFactors([("rev", "reversal", {"lookback": 1})])
    assert price_only.update(("A",), (1.0,), (1.0,), (1.0,), (1.0,), None).shape == (1, 1)


def test_malformed_bars_are_refused():
    incremental = IncrementalFactors([("rev", "reversal", {"lookback": 1})])
    with pytest.raises(ValueError, match="close has 1 values for 2 symbols"):
        incremental.update(("A", "B"), (1, 1), (1, 1), (1, 1), (1.0,), None)
    with pytest.raises(ValueError, match=r"symbols repeated in one bar: \['A'\]"):
        incremental.update(("A", "A"), (1, 1), (1, 1), (1, 1), (1.0, 2.0), None)
    with pytest.raises(ValueError, match="unknown factor name 'nope'"):
        IncrementalFactors([("x", "nope", {})])


def test_window_is_the_longest_history_any_factor_reads():
    incremental = IncrementalFactors([("m", "momentum", {}), ("r", "reversal", {})])
    assert incremental.window == 253
