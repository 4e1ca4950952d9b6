"""Time-sortable unique event ids: 12 hex digits of milliseconds, then 20 of randomness.

Fixed-width lowercase hex sorts lexicographically in time order, and formats in well under a
microsecond (ids are made for every event, so this is on every hot path).
"""

from __future__ import annotations

import os
import random
import threading
import time

_RANDOM_MASK = (1 << 80) - 1
# A private generator, seeded from os.urandom: ~10x cheaper per draw than os.urandom, and
# untouched by anyone seeding the global ``random`` (two processes seeded alike must still
# draw different ids). Reseeded in a forked child so parent and child never draw alike.
_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)


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
        self._prefix = ""  # hex of _last_ms, formatted once per millisecond

    def __call__(self, now_ms: int | None = None) -> str:
        ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        with self._lock:
            if ms > self._last_ms:
                self._last_ms = ms
                self._prefix = f"{ms:012x}"
                # 79 bits: the top bit stays clear so increments have headroom before wrapping.
                random_part = self._last_random = _random.getrandbits(79)
            else:
                random_part = self._last_random = (self._last_random + 1) & _RANDOM_MASK
            prefix = self._prefix
        return f"{prefix}{random_part:020x}"


new_event_id = EventIdGenerator()


def event_id_time_ms(event_id: str) -> int:
    """Return the millisecond timestamp an id was created at."""
    return int(event_id[:12], 16)
