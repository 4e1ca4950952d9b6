"""carry_forward holds each column's last value across rows without one, as a loop would."""

from __future__ import annotations

import numpy as np

from engine.data.fill import carry_forward


def test_carry_forward_equals_a_loop_over_rows():
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(40, 6))
    rows[rng.random(rows.shape) < 0.4] = np.nan
    rows[:, 5] = np.nan  # never a value: stays at its value before
    before = np.array([1.0, np.nan, 3.0, 4.0, 5.0, 6.0])
    expected, held = np.empty_like(rows), before.copy()
    for t, row in enumerate(rows):
        held = np.where(np.isnan(row), held, row)
        expected[t] = held
    np.testing.assert_array_equal(carry_forward(rows, before), expected)
