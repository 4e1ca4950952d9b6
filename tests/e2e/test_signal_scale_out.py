"""Two signal processes share the inference load of a paper account run as separate processes
(``deepfactor run SERVICE`` over a real Redis, a namespace of its own).

The strategy is ``trailing-ic``, whose weights come from the last ``[model] lookback``
snapshots: an instance that rebuilt its history from the half of the snapshots it was handed
would signal differently. Mid-run one of the two is frozen (SIGSTOP) until it holds a snapshot
pending and then killed with SIGKILL, never to come back: the other reclaims that snapshot
once idle for ``[bus] claim_idle_ms`` and the replay goes on.

Checked from the streams: both instances handled snapshots (their heartbeats) and showed in
``deepfactor status`` as two alive rows; every FactorSnapshot got exactly one Signal; the
Signals are, bit for bit, those a single instance computes from the same snapshots and those
of the in-process backtest over the same bars; every group caught up, nothing dead-lettered.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
import redis

from engine.bus import MemoryBus, RedisBus, keys
from engine.clock import SimulatedClock
from engine.config import load_config
from engine.data.sources import SyntheticSource
from engine.events import FactorSnapshot, Heartbeat, Signal, decode, make_event
from services.commands.backtest import Backtest
from services.commands.status import services_status
from services.runtime.assembly import build_services
from services.runtime.loop import Pump
from tests.conftest import delete_namespaces
from tests.e2e.test_crash_processes import (
    SETTINGS,
    Account,
    assert_every_group_caught_up,
    namespace_of,
)

BARS = 120
SIGNALS = ("signal-a", "signal-b")
OTHERS = ("factor-update", "rebalance", "execution", "recorder")
SCALE_SETTINGS = {
    **SETTINGS,
    "DEEPFACTOR_STRATEGY__NAME": "trailing-ic",
    "DEEPFACTOR_MODEL__LOOKBACK": "8",
    "DEEPFACTOR_BUS__CLAIM_IDLE_MS": "1000",
    "DEEPFACTOR_BUS__RECLAIM_INTERVAL_MS": "200",
    "DEEPFACTOR_PAPER__HEARTBEAT_S": "0.5",
}


class ScaledAccount(Account):
    """The account's processes, with ``signal-NAME`` a signal process of instance NAME."""

    def command(self, service: str) -> list[str]:
        if service.startswith("signal-"):
            return [*super().command("signal"), "--instance", service.removeprefix("signal-")]
        return super().command(service)


def stream(client: redis.Redis, namespace: str, topic: str) -> list[tuple[str, object]]:
    entries = client.xrange(keys.stream(namespace, topic))
    return [(entry_id.decode(), decode(fields[b"event"])) for entry_id, fields in entries]


def comparable(signal: Signal) -> bytes:
    # Everything but the inference time, which no two runs share, as the bus carries it
    # (shortest round-trip floats: equal bytes are equal bits; NaN scores are null).
    return msgspec.json.encode(msgspec.structs.replace(signal, latency_ms=0.0))


def freeze_holding_a_snapshot(
    account: Account, client: redis.Redis, namespace: str, service: str
) -> list[str]:
    """SIGSTOP ``service`` until it holds a snapshot pending (it was handed one in its
    blocking read, or stopped while handling it); return the pending message ids. A process
    stopped between two reads gets nothing (the other member takes everything): as soon as two
    more snapshots have gone by without it, it is thawed and tried again, so that each try
    spends two bars of the replay, not seconds of it."""
    process = account.processes[service]
    replay = account.processes["market-data"]
    consumer = f"signal-{service.removeprefix('signal-')}"
    key = keys.stream(namespace, FactorSnapshot.TOPIC)
    tries = 0
    while replay.poll() is None:
        tries += 1
        published = client.xlen(key)
        process.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            rows = client.xpending_range(key, "signal", "-", "+", 10, consumername=consumer)
            if rows:
                return [row["message_id"].decode() for row in rows]
            if client.xlen(key) >= published + 2 or replay.poll() is not None:
                break
            time.sleep(0.002)
        process.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    pytest.fail(f"{service} never held a snapshot while frozen ({tries} tries in the replay)")


def single_instance_signals(snapshots: list[FactorSnapshot]) -> dict[datetime, bytes]:
    """What one signal instance publishes for ``snapshots``, in that order."""
    config = load_config(None, SCALE_SETTINGS)
    bus = MemoryBus()
    service = build_services(config, bus, SimulatedClock(datetime(2020, 1, 1, tzinfo=UTC)))
    pump = Pump([service.signal])
    for snapshot in snapshots:
        bus.publish(FactorSnapshot.TOPIC, make_event(snapshot, source="factor-update"))
    pump.pump()
    reader = bus.consumer("probe", "p", [Signal.TOPIC])
    return {d.event.payload.asof: comparable(d.event.payload) for d in reader.read(100_000)}


def backtest_signals() -> dict[datetime, bytes]:
    config = load_config(None, SCALE_SETTINGS)
    market = config.market
    panel = SyntheticSource(market.symbols, BARS, seed=market.seed, start=market.start).panel()
    backtest = Backtest(config, panel)
    backtest.run()
    reader = backtest.bus.consumer("probe", "p", [Signal.TOPIC])
    return {d.event.payload.asof: comparable(d.event.payload) for d in reader.read(100_000)}


def test_two_signal_processes_share_the_snapshots_and_signal_as_one_instance(
    tmp_path: Path, redis_url: str
) -> None:
    base = f"test-scale-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "account"
    env = {**os.environ, **SCALE_SETTINGS, "DEEPFACTOR_BUS__REDIS_URL": redis_url}
    env["DEEPFACTOR_RUN__NAMESPACE"] = base
    account = ScaledAccount(out, env, BARS)
    client = redis.Redis.from_url(redis_url)
    try:
        for service in (*OTHERS, *SIGNALS):
            account.start(service)
        account.start("market-data")  # opens the account the consumers wait for
        namespace = namespace_of(out)
        for service in SIGNALS:
            account.wait_running(service)
        replay = account.processes["market-data"]
        deadline = time.monotonic() + 120
        while client.xlen(keys.stream(namespace, "bars")) < BARS // 2:
            assert replay.poll() is None, account.log_tail("market-data")
            assert time.monotonic() < deadline, "the replay never reached half-way"
            time.sleep(0.01)
        bus = RedisBus(redis_url, namespace, give_up_after_s=5)
        try:
            rows = [r for r in services_status(bus, datetime.now(UTC)) if r["service"] == "signal"]
        finally:
            bus.close()
        assert {(r["instance"], r["state"]) for r in rows} == {
            ("signal-a", "alive"),
            ("signal-b", "alive"),
        }
        held = freeze_holding_a_snapshot(account, client, namespace, "signal-b")
        account.kill("signal-b")  # and never started again: signal-a takes its snapshot
        assert replay.wait(timeout=120) == 0, account.log_tail("market-data")
        assert_every_group_caught_up(client, namespace)
        for service in ("signal-a", *OTHERS):
            account.processes[service].send_signal(signal.SIGTERM)
        for service in ("signal-a", *OTHERS):
            code = account.processes[service].wait(timeout=60)
            assert code == 0, f"{service} exited {code}:\n{account.log_tail(service)}"
        assert_every_group_caught_up(client, namespace)

        snapshots = stream(client, namespace, FactorSnapshot.TOPIC)
        signals = [event.payload for _, event in stream(client, namespace, Signal.TOPIC)]
        assert len(snapshots) == BARS
        per_snapshot = Counter(s.asof for s in signals)
        assert set(per_snapshot) == {event.payload.asof for _, event in snapshots}
        assert set(per_snapshot.values()) == {1}, "a snapshot got more or less than 1 Signal"
        # Both members did part of the work: each one's newest heartbeat counts its events.
        beats: dict[str, Heartbeat] = {}
        for _, event in reversed(stream(client, namespace, Heartbeat.TOPIC)):
            if event.payload.service == "signal":
                beats.setdefault(event.payload.instance, event.payload)
        handled = {name: beat.processed for name, beat in beats.items()}
        assert set(handled) == {"signal-a", "signal-b"} and min(handled.values()) > 0, handled
        # The frozen member's snapshot was reclaimed by the other one.
        assert held[0] in {entry_id for entry_id, _ in snapshots}
        assert '"bus.reclaimed"' in account.log_tail("signal-a", 100_000)
        bus = RedisBus(redis_url, namespace, give_up_after_s=5)
        try:
            assert bus.dead_letters() == []
        finally:
            bus.close()

        found = {s.asof: comparable(s) for s in signals}
        expected = single_instance_signals([event.payload for _, event in snapshots])
        assert found == expected
        assert not all(s.fallback for s in signals)  # trailing-IC served from the history
        assert found == backtest_signals()
        print(f"handled per instance: {handled}; reclaimed {held}")
    finally:
        account.close()
        client.close()
        delete_namespaces(redis_url, base)
