"""A user's factor file joins as of each symbol's own rows: at a bar opening at b, each symbol
takes its latest row stamped at or before b, never a later one, and NaN before its first."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from strategies.factor_files import load_factor_file


def at(day: int, hour: int = 0) -> datetime:
    return datetime(2024, 1, day, hour, tzinfo=UTC)


def test_each_symbol_takes_its_own_latest_row_at_or_before_the_bar(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text(
        "timestamp,symbol,sentiment,quality\n"
        "2024-01-01,AAA,1.0,10.0\n"
        "2024-01-01,BBB,2.0,20.0\n"
        "2024-01-02,AAA,3.0,\n"  # AAA's newer row leaves quality empty: unknown, not carried
        "2024-01-03,CCC,5.0,50.0\n"
        "2024-01-04,BBB,4.0,40.0\n"
    )
    factors = load_factor_file(path)
    assert factors.names == ("sentiment", "quality")
    universe = ("AAA", "BBB", "CCC", "ZZZ")

    def values(when: datetime) -> list[list[float]]:
        return factors.values_at(when, universe).tolist()

    nan = np.nan
    np.testing.assert_array_equal(values(datetime(2023, 12, 31, tzinfo=UTC)), [[nan] * 4] * 2)
    np.testing.assert_array_equal(values(at(1)), [[1.0, 2.0, nan, nan], [10.0, 20.0, nan, nan]])
    # Day 3: AAA's row is from day 2, BBB's from day 1, CCC's from today.
    np.testing.assert_array_equal(values(at(3)), [[3.0, 2.0, 5.0, nan], [nan, 20.0, 50.0, nan]])
    np.testing.assert_array_equal(
        values(at(3, 23)), [[3.0, 2.0, 5.0, nan], [nan, 20.0, 50.0, nan]]
    )  # BBB's day-4 row is not seen a moment early
    np.testing.assert_array_equal(values(at(9)), [[3.0, 4.0, 5.0, nan], [nan, 40.0, 50.0, nan]])
