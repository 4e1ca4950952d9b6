"""Runs of bars fed as one block give the factor engine exactly the state and the exposures it
gets from the same bars one at a time: the backtest's quiet runs rely on it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.data import synthetic_panel
from strategies.factors import FACTORS, IncrementalFactors
from strategies.factors.windows import LagBuffer, WindowState
from tests.unit.strategies.factor_references import SMALL_PARAMS

N_ASSETS, N_BARS = 10, 330
COLUMNS = ("open", "high", "low", "close", "volume")


def bars_with_holes() -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """Bars where symbols list late (two in one run, the later column first), skip bars,
    delist, and one bar time has no symbol at all."""
    panel = synthetic_panel(N_ASSETS, N_BARS, seed=5)
    values = {name: getattr(panel, name).copy() for name in COLUMNS}
    missing = np.zeros((N_BARS, N_ASSETS), dtype=bool)
    missing[:40, 8] = True  # lists at bar 40
    missing[:45, 2] = True  # lists at bar 45, after column 8
    missing[:200, 6] = True  # lists late, long after the others
    missing[120:125, 4] = True
    missing[300:, 9] = True  # delists
    missing[150] = True  # nobody traded at this bar time
    for matrix in values.values():
        matrix[missing] = np.nan
    return panel.symbols, values


def feed_bar_by_bar(engine: IncrementalFactors, symbols, values, t: int) -> np.ndarray | None:
    present = np.flatnonzero(~np.isnan(values["close"][t]))
    if len(present) == 0:
        return None  # no BarSet is published for a bar time without bars
    return engine.update(
        tuple(symbols[j] for j in present), *(values[name][t, present] for name in COLUMNS)
    )


def block_sizes(n_bars: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < n_bars:
        sizes.append(int(rng.choice([1, 2, 3, 17, 40, 90])))
    sizes[-1] -= sum(sizes) - n_bars
    return sizes


def assert_same(block_result: np.ndarray, expected: np.ndarray, where: str) -> None:
    assert block_result.shape == expected.shape, where
    np.testing.assert_array_equal(block_result, expected, err_msg=where)  # NaN == NaN here


@pytest.mark.parametrize(
    "requests",
    [
        [(name, name, {}) for name in FACTORS],
        [(f"{name}_short", name, SMALL_PARAMS[name]) for name in FACTORS],
        [("momentum_30_5", "momentum", {"lookback": 30, "skip": 5})],  # raw series only: no loop
        [("momentum", "momentum", {})],
    ],
    ids=["all-defaults", "all-short-windows", "momentum-short", "momentum-default"],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_blocks_give_identical_exposures_and_state_to_bar_by_bar(requests, seed):
    symbols, values = bars_with_holes()
    by_bar, by_block = IncrementalFactors(requests), IncrementalFactors(requests)
    start = 0
    for size in block_sizes(N_BARS, seed):
        stop = start + size
        expected = None  # the exposures at the block's last bar time that had bars
        for t in range(start, stop):
            result = feed_bar_by_bar(by_bar, symbols, values, t)
            expected = result if result is not None else expected
        block = {name: values[name][start:stop] for name in COLUMNS}
        if np.isnan(block["close"]).all():
            with pytest.raises(ValueError, match="no symbol has a bar"):
                by_block.update_block(symbols, block)
        else:
            assert_same(by_block.update_block(symbols, block), expected, f"block {start}:{stop}")
        assert by_block.symbols == by_bar.symbols and by_block.n_bars == by_bar.n_bars
        start = stop
    assert by_bar.symbols.index(symbols[8]) < by_bar.symbols.index(symbols[2])


def test_a_block_without_volume_is_refused_when_a_factor_needs_it():
    engine = IncrementalFactors([("amihud", "amihud", {})])
    symbols, values = bars_with_holes()
    block = {name: values[name][:5] for name in COLUMNS} | {"volume": None}
    with pytest.raises(ValueError, match="need volume"):
        engine.update_block(symbols, block)
    assert engine.n_bars == 0


def test_a_block_whose_width_differs_from_its_symbols_is_refused():
    engine = IncrementalFactors([("momentum", "momentum", {})])
    with pytest.raises(ValueError, match=r"close must be \(bars, 3\)"):
        engine.update_block(("A", "B", "C"), {"close": np.ones((4, 2))})


def feed_in_chunks(one, many, rows: np.ndarray, chunks: list[int]):
    """Push ``rows`` into ``one`` row by row and into ``many`` a chunk at a time, yielding
    after each chunk."""
    start = 0
    for size in chunks:
        for row in rows[start : start + size]:
            one.push(row)
        many.push_many(rows[start : start + size])
        start += size
        yield


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(1, 20),
    reducer=st.sampled_from(["sum", "max"]),
    chunks=st.lists(st.integers(1, 45), min_size=1, max_size=8),
    seed=st.integers(0, 9),
)
def test_window_state_push_many_equals_pushing_rows_one_by_one(length, reducer, chunks, seed):
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(sum(chunks) + 1, 3)) * 10.0 ** rng.integers(-3, 4, 3)
    rows[rng.random(rows.shape) < 0.05] = np.nan
    one, many = WindowState(length, reducer, 3), WindowState(length, reducer, 3)
    for _ in feed_in_chunks(one, many, rows[:-1], chunks):
        pass
    np.testing.assert_array_equal(many.push(rows[-1]), one.push(rows[-1]))


@settings(max_examples=60, deadline=None)
@given(depth=st.integers(1, 12), chunks=st.lists(st.integers(1, 30), min_size=1, max_size=6))
def test_lag_buffer_push_many_equals_pushing_rows_one_by_one(depth, chunks):
    rows = np.arange(sum(chunks) * 2, dtype=float).reshape(-1, 2)
    one, many = LagBuffer(depth, 2), LagBuffer(depth, 2)
    for _ in feed_in_chunks(one, many, rows, chunks):
        for k in range(depth):
            np.testing.assert_array_equal(many.lag(k), one.lag(k))
