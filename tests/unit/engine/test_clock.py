"""Clocks: simulated time only moves forward, and every "now" is aware UTC."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from engine.clock import SimulatedClock, WallClock

START = datetime(2024, 1, 1, tzinfo=UTC)


def test_simulated_clock_starts_where_it_is_told():
    assert SimulatedClock(START).now() == START


def test_simulated_clock_advances_forward_and_may_stay_put():
    clock = SimulatedClock(START)
    later = START + timedelta(days=1)
    clock.advance_to(later)
    assert clock.now() == later
    clock.advance_to(later)
    assert clock.now() == later


def test_simulated_clock_refuses_to_go_backwards_and_keeps_its_time():
    clock = SimulatedClock(START + timedelta(hours=1))
    earlier = START
    expected = f"simulated clock cannot go back from {START + timedelta(hours=1)} to {earlier}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        clock.advance_to(earlier)
    assert clock.now() == START + timedelta(hours=1)


def test_simulated_clock_rejects_a_naive_start():
    with pytest.raises(
        ValueError,
        match="simulated clock needs an aware UTC start, received "
        r"datetime\.datetime\(2024, 1, 1, 0, 0\)",
    ):
        SimulatedClock(datetime(2024, 1, 1))


def test_wall_clock_returns_aware_utc_close_to_the_machine_clock():
    before = datetime.now(UTC)
    now = WallClock().now()
    after = datetime.now(UTC)
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)
    assert before <= now <= after
