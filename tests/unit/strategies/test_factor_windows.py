"""Window sums and maxima: equal to a plain loop, NaN-propagating, and identical bit for bit
between the whole-history and the one-row-at-a-time computation."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.factors.windows import LagBuffer, WindowState, window_reduce


def random_rows(n_rows: int = 97, n_columns: int = 4) -> np.ndarray:
    rng = np.random.default_rng(2)
    values = rng.normal(0.0, 1.0, (n_rows, n_columns)) * 10.0 ** rng.integers(-3, 4, n_columns)
    values[40, 1] = np.nan
    values[77:80, 2] = np.nan
    return values


@pytest.mark.parametrize("reducer", ["sum", "max"])
@pytest.mark.parametrize("length", [1, 2, 7, 16, 97, 120])
def test_window_reduce_equals_a_plain_loop(reducer, length):
    values = random_rows()
    plain = np.sum if reducer == "sum" else np.max
    expected = np.full_like(values, np.nan)
    for t in range(length - 1, values.shape[0]):
        expected[t] = plain(values[t - length + 1 : t + 1], axis=0)  # NaN propagates
    np.testing.assert_allclose(
        window_reduce(values, length, reducer),
        expected,
        rtol=1e-13,
        atol=1e-13 * np.nanmax(np.abs(values)),
    )


@pytest.mark.parametrize("reducer", ["sum", "max"])
@pytest.mark.parametrize("length", [1, 3, 16, 50])
def test_window_state_pushed_row_by_row_is_identical_to_window_reduce(reducer, length):
    values = random_rows()
    values[:30, 3] = np.nan  # the last column joins at row 30
    full = window_reduce(values, length, reducer)
    state = WindowState(length, reducer, 3)
    for t in range(values.shape[0]):
        if t == 30:
            state.add_columns(1)
        row = values[t] if t >= 30 else values[t, :3]
        np.testing.assert_array_equal(state.push(row), full[t, : row.shape[0]])


def test_lag_buffer_returns_rows_k_bars_back_and_nan_before_the_first():
    buffer = LagBuffer(3, 1)
    for value in (1.0, 2.0, 3.0, 4.0):
        buffer.push(np.array([value]))
    assert buffer.lag(0)[0] == 4.0 and buffer.lag(2)[0] == 2.0
    fresh = LagBuffer(3, 1)
    fresh.push(np.array([1.0]))
    assert np.isnan(fresh.lag(2)[0])
