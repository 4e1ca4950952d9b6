"""One rule book for bad bars: each problem is found and named, good and missing bars pass."""

from __future__ import annotations

import numpy as np
import pytest

from engine.data.quality import REASONS, bar_problems

GOOD = dict(open_=10.0, high=12.0, low=9.0, close=11.0, volume=5.0)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"open_": np.nan}, "missing open"),
        ({"high": 0.0}, "non-positive high"),
        ({"low": -1.0}, "non-positive low"),
        ({"close": 0.0}, "non-positive close"),
        ({"high": 8.0, "low": 9.0}, "high below low"),
        ({"high": 10.5}, "high below open or close"),
        ({"low": 10.5}, "low above open or close"),
        ({"volume": -1.0}, "negative volume"),
    ],
)
def test_each_problem_is_named(change, reason):
    bar = {**GOOD, **change}
    arrays = {k: np.array([v, GOOD[k]]) for k, v in bar.items()}
    problems = bar_problems(**arrays)
    assert REASONS[problems[0]] == reason and problems[1] == -1


def test_missing_bar_is_not_a_bad_bar_and_close_only_data_passes():
    close = np.array([np.nan, 3.0])
    assert bar_problems(close, close, close, close, None).tolist() == [-1, -1]
