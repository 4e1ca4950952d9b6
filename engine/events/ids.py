"""Time-sortable unique event ids (ULID layout: 48-bit ms time + 80 random bits, base32)."""

from __future__ import annotations

import os
import threading
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_MASK = (1 << 80) - 1


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


class EventIdGenerator:
    """Make 26-character ids that sort by creation time, also within one millisecond.

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
                self._last_random += 1
            else:
                # Drop the top bit so increments have headroom before overflowing.
                self._last_random = int.from_bytes(os.urandom(10), "big") >> 1
            self._last_ms = ms
            random_part = self._last_random & _RANDOM_MASK
        return _encode(ms, 10) + _encode(random_part, 16)


new_event_id = EventIdGenerator()


def event_id_time_ms(event_id: str) -> int:
    """Return the millisecond timestamp an id was created at."""
    value = 0
    for char in event_id[:10]:
        value = value * 32 + _CROCKFORD.index(char)
    return value
