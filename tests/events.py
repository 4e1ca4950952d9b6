"""Small builders of valid events for tests."""

from __future__ import annotations

from datetime import UTC, datetime

from engine.events import BarSet, Envelope, Heartbeat, OrderRequest, make_event

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def heartbeat(sequence: int, source: str = "test") -> Envelope:
    """A tiny event whose ``processed`` counter carries a sequence number."""
    return make_event(
        Heartbeat(service=source, instance="i-1", pid=1, status="running", processed=sequence),
        source=source,
        ts=T0,
    )


def order_request(sequence: int) -> Envelope:
    """A realistic ~400-byte order event."""
    return make_event(
        OrderRequest(
            client_order_id=f"df-paper-rb-20240101T000000Z-monthly-BTC-USDT-{sequence:06d}",
            rebalance_id="df-paper-rb-20240101T000000Z-monthly",
            asof=T0,
            symbol="BTC/USDT",
            side="buy",
            quantity=0.125 + sequence * 1e-6,
            order_type="limit",
            limit_price=42_123.45,
            reference_price=42_100.0,
        ),
        source="rebalance",
        corr="df-paper-rb-20240101T000000Z-monthly",
        ts=T0,
    )


def bar_set(n_assets: int = 20) -> BarSet:
    """A 20-asset daily bar set with volume."""
    return BarSet(
        timeframe="1d",
        bar_open=T0,
        symbols=tuple(f"A{i:03d}/USDT" for i in range(n_assets)),
        open=tuple(100.0 + i * 1.37 for i in range(n_assets)),
        high=tuple(102.0 + i * 1.41 for i in range(n_assets)),
        low=tuple(98.0 + i * 1.29 for i in range(n_assets)),
        close=tuple(101.0 + i * 1.33 for i in range(n_assets)),
        volume=tuple(1_000.0 * (i + 1) for i in range(n_assets)),
    )
