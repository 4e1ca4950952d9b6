"""Event ids sort by creation time and never repeat."""

from __future__ import annotations

import os
import random
import re

import pytest

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


def test_ids_are_32_lowercase_hex_digits_with_the_millisecond_first():
    event_id = EventIdGenerator()(now_ms=0x18F0A1B2C3D)
    assert re.fullmatch(r"[0-9a-f]{32}", event_id)
    assert event_id.startswith("018f0a1b2c3d")


def test_seeding_the_global_random_does_not_make_two_generators_draw_alike():
    state = random.getstate()
    try:
        random.seed(42)
        first = EventIdGenerator()(now_ms=1_700_000_000_000)
        random.seed(42)
        second = EventIdGenerator()(now_ms=1_700_000_000_000)
    finally:
        random.setstate(state)
    assert first != second


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_draws_other_ids_than_its_parent():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report one id and leave without running pytest's teardown
        os.write(write_end, EventIdGenerator()(now_ms=1_700_000_000_000).encode())
        os._exit(0)
    os.close(write_end)
    parent_id = EventIdGenerator()(now_ms=1_700_000_000_000)
    child_id = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child_id) == 32 and child_id != parent_id
