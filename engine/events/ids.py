"""Time-sortable unique event ids: 12 hex digits of milliseconds, then 20 of randomness.

Fixed-width lowercase hex sorts lexicographically in time order, and formats in well under a
microsecond (ids are made for every event, so this is on every hot path).
"""

from __future__ import annotations

import os
import threading
import time

_RANDOM_MASK = (1 << 80) - 1


class EventIdGenerator:
    """Make ids that sort by creation time, also within one millisecond.

    Within a millisecond (or when the wall clock steps back) the random part is incremented
    rather than redrawn, so ids from one generator strictly increase; ids from different
    processes differ in their random part.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0

    def __call__(self, now_ms: int | None = None) -> str:
        ms = int(time.time() * 1000) if now_ms is None else now_ms
        with self._lock:
            if ms <= self._last_ms:
                ms = self._last_ms
                self._last_random = (self._last_random + 1) & _RANDOM_MASK
            else:
                # Drop the top bit so increments have headroom before wrapping.
                self._last_random = int.from_bytes(os.urandom(10), "big") >> 1
            self._last_ms = ms
            random_part = self._last_random
        return f"{ms:012x}{random_part:020x}"


new_event_id = EventIdGenerator()


def event_id_time_ms(event_id: str) -> int:
    """Return the millisecond timestamp an id was created at."""
    return int(event_id[:12], 16)
