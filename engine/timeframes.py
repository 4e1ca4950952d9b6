"""Timeframe labels in ccxt's style ('5m', '1h', '1d') and their durations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@lru_cache(maxsize=64)
def timeframe_delta(label: str) -> timedelta:
    """Return the duration of ``label``; raise ValueError naming the label if malformed."""
    count, unit = label[:-1], label[-1:]
    if not count.isdigit() or int(count) <= 0 or unit not in _UNIT_SECONDS:
        raise ValueError(f"timeframe must look like 30s, 5m, 1h, 1d or 1w, received {label!r}")
    return timedelta(seconds=int(count) * _UNIT_SECONDS[unit])


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc_from_ms(ms: int) -> datetime:
    """Return the aware UTC time of epoch milliseconds (ccxt's and numpy's common currency)."""
    return _EPOCH + timedelta(milliseconds=ms)
