"""``deepfactor status`` with a service that scales out: each signal instance has its own
row, named, and two alive instances of one service are two healthy rows, not a problem."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.bus import RedisBus, keys
from engine.config import load_config
from engine.events import Heartbeat, make_event
from services.commands.status import account_status, render_status

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def bus(redis_url: str, namespace: str):
    bus = RedisBus(redis_url, namespace, give_up_after_s=5)
    bus.redis.set(keys.account(namespace), "1")
    yield bus
    bus.close()


def beat(service: str, instance: str, pid: int, processed: int) -> Heartbeat:
    return Heartbeat(
        service=service,
        instance=instance,
        pid=pid,
        status="running",
        interval_s=1.0,
        processed=processed,
    )


def test_two_alive_signal_instances_are_two_rows_each_named(bus: RedisBus) -> None:
    fresh = NOW - timedelta(seconds=0.5)
    for heartbeat in (
        beat("signal", "signal-box", 101, 40),
        beat("signal", "signal-box-2", 102, 38),
        beat("rebalance", "rebalance-box", 103, 80),
    ):
        bus.publish("heartbeat", make_event(heartbeat, source=heartbeat.service, ts=fresh))
    status = account_status(bus, load_config(None, {}), now=NOW)
    rows = [(r["service"], r["instance"], r["state"], r["processed"]) for r in status["services"]]
    assert rows == [
        ("rebalance", "rebalance-box", "alive", 80),
        ("signal", "signal-box", "alive", 40),
        ("signal", "signal-box-2", "alive", 38),
    ]
    lines = render_status(status, "runs/x").splitlines()
    header = next(line for line in lines if line.strip().startswith("service"))
    assert header.split()[:3] == ["service", "instance", "state"]
    signal_rows = [line.split() for line in lines if line.strip().startswith("signal")]
    assert [row[:3] for row in signal_rows] == [
        ["signal", "box", "alive"],
        ["signal", "box-2", "alive"],
    ]
