"""Event ids sort by creation time and never repeat."""

from __future__ import annotations

from engine.events import event_id_time_ms, new_event_id
from engine.events.ids import EventIdGenerator


def test_ids_are_unique_and_strictly_increasing_within_one_millisecond():
    make = EventIdGenerator()
    ids = [make(now_ms=1_700_000_000_000) for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert ids == sorted(ids)


def test_ids_sort_by_time_and_carry_their_timestamp():
    make = EventIdGenerator()
    early = make(now_ms=1_700_000_000_000)
    late = make(now_ms=1_700_000_010_001)
    assert early < late
    assert event_id_time_ms(early) == 1_700_000_000_000
    assert event_id_time_ms(late) == 1_700_000_010_001
    assert len(early) == 32


def test_a_clock_stepping_back_does_not_break_ordering():
    make = EventIdGenerator()
    first = make(now_ms=1_700_000_000_500)
    second = make(now_ms=1_700_000_000_100)
    assert second > first


def test_default_generator_ids_are_unique_across_calls():
    assert len({new_event_id() for _ in range(500)}) == 500
