"""Hypothesis strategies for deepfactor's events, kept in one place (as attrs does)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import strategies as st

from engine.events import BarSet

utc_datetimes = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
prices = st.floats(min_value=1e-9, max_value=1e9, allow_nan=False, allow_infinity=False)
volumes = st.floats(min_value=0.0, max_value=1e12, allow_nan=False, allow_infinity=False)
symbols = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=8).map(
    lambda base: f"{base}/USDT"
)


@st.composite
def bar_sets(draw: st.DrawFn, max_assets: int = 30) -> BarSet:
    """A valid BarSet with 1..max_assets distinct symbols, with or without volume."""
    names = draw(st.lists(symbols, min_size=1, max_size=max_assets, unique=True))
    n = len(names)
    column = st.lists(prices, min_size=n, max_size=n).map(tuple)
    with_volume = draw(st.booleans())
    return BarSet(
        timeframe=draw(st.sampled_from(["1m", "5m", "1h", "1d"])),
        bar_open=draw(utc_datetimes),
        symbols=tuple(names),
        open=draw(column),
        high=draw(column),
        low=draw(column),
        close=draw(column),
        volume=draw(st.lists(volumes, min_size=n, max_size=n).map(tuple)) if with_volume else None,
    )
