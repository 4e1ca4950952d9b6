"""The bus under Redis faults: a bounded first connection naming the URL (password redacted),
the data-loss guard (a flushed or restarted-empty server is never silently re-populated), and
``fail`` waking calls that wait for a server that is gone.

Each fault is made on a private server without persistence (never the shared one).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import msgspec
import pytest
import redis

from engine.bus import EmbeddedRedis, RedisBus, keys, redis_streams
from engine.bus.factory import open_redis_bus
from engine.bus.redis_streams import RedisDataLostError, redact_url
from engine.config import Config
from engine.errors import BusUnavailableError
from tests.events import heartbeat


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("redis://user:s3cret@host:6380/2") == "redis://user:***@host:6380/2"
    assert redact_url("rediss://:s3cret@host/0") == "rediss://:***@host/0"
    assert redact_url("redis://127.0.0.1:6379/9") == "redis://127.0.0.1:6379/9"
    assert redact_url("unix:///tmp/x/redis.sock") == "unix:///tmp/x/redis.sock"


def test_first_connection_gives_up_after_connect_timeout() -> None:
    config = Config()
    config = msgspec.structs.replace(
        config,
        bus=msgspec.structs.replace(
            config.bus, redis_url="redis://u:pw@127.0.0.1:1/0", connect_timeout_s=0.5
        ),
    )
    started = time.monotonic()
    with pytest.raises(BusUnavailableError) as caught, open_redis_bus(config):
        pytest.fail("connected to nothing")
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "cannot connect to Redis at redis://u:***@127.0.0.1:1/0" in message
    assert "connect_timeout_s" in message and "pw" not in message


@pytest.fixture
def server(short_tmp: Path):
    with EmbeddedRedis(short_tmp / "srv", appendonly=False) as embedded:
        yield embedded


def test_flushed_redis_is_never_repopulated(server: EmbeddedRedis) -> None:
    bus = RedisBus(server.url, "acct", give_up_after_s=5, reconnect_max_delay_s=0.05)
    try:
        marker = keys.account("acct")
        bus.redis.set(marker, "created")
        bus.guard_data(marker)
        consumer = bus.consumer("g", "g-1", ["bars"])
        consumer.read(10)
        bus.redis.flushall()
        # The group is gone (NOGROUP): the guard refuses to recreate it.
        with pytest.raises(RedisDataLostError, match="was lost"):
            consumer.read(10)
        assert bus.data_lost.is_set()
        assert bus.redis.dbsize() == 0  # nothing recreated
        with pytest.raises(RedisDataLostError):  # and every later call refuses at once
            bus.topic_length("bars")
    finally:
        bus.close()


def test_heartbeat_lag_after_a_flush_says_the_data_was_lost(server: EmbeddedRedis) -> None:
    """XINFO GROUPS on a flushed stream says "no such key", not NOGROUP: the heartbeat's lag
    read must still end in the data-lost error (CI once saw a bare "no such key" here)."""
    bus = RedisBus(server.url, "acct", give_up_after_s=5, reconnect_max_delay_s=0.05)
    try:
        marker = keys.account("acct")
        bus.redis.set(marker, "created")
        bus.guard_data(marker)
        consumer = bus.consumer("g", "g-1", ["bars"])
        consumer.backlog()
        bus.redis.flushall()
        with pytest.raises(RedisDataLostError, match="was lost"):
            consumer.backlog()
        assert bus.redis.dbsize() == 0
    finally:
        bus.close()


def test_redis_restarted_empty_is_found_on_reconnection(server: EmbeddedRedis) -> None:
    bus = RedisBus(server.url, "acct", give_up_after_s=10, reconnect_max_delay_s=0.05)
    try:
        marker = keys.account("acct")
        bus.redis.set(marker, "created")
        bus.guard_data(marker)
        assert bus.topic_length("bars") == 0
        server.stop()
        restarted = threading.Timer(0.5, server.start)
        restarted.start()
        # The call waits for the server, reconnects, and then finds the marker gone.
        with pytest.raises(RedisDataLostError, match="acct:account"):
            bus.topic_length("bars")
        restarted.join()
    finally:
        bus.close()


def test_fail_wakes_a_call_waiting_for_a_dead_server(short_tmp: Path) -> None:
    bus = RedisBus(
        f"unix://{short_tmp}/nothing.sock", "acct", reconnect_max_delay_s=10.0
    )  # waits forever on its own
    try:
        threading.Timer(1.0, bus.fail, args=("the server is gone",)).start()
        started = time.monotonic()
        with pytest.raises(BusUnavailableError, match="the server is gone"):
            bus.ping()
        assert time.monotonic() - started < 3
    finally:
        bus.close()


def test_guard_lets_a_healthy_run_be(server: EmbeddedRedis) -> None:
    bus = RedisBus(server.url, "acct", give_up_after_s=5)
    try:
        marker = keys.account("acct")
        bus.redis.set(marker, "created")
        bus.guard_data(marker)
        bus.check_data()
        assert not bus.data_lost.is_set()
        client = redis.Redis.from_url(server.url)
        assert client.exists(marker)
        client.close()
    finally:
        bus.close()


def test_writes_after_a_flush_leave_nothing_behind(server: EmbeddedRedis) -> None:
    bus = RedisBus(server.url, "acct", give_up_after_s=5)
    try:
        marker = keys.account("acct")
        bus.redis.set(marker, "created")
        bus.guard_data(marker)
        bus.publish("bars", heartbeat(1))
        consumer = bus.consumer("g", "g-1", ["bars"])
        (delivery,) = consumer.read(10)
        bus.redis.flushall()
        # The commit of work in flight when the data went: state, outbox and ack, none written.
        with pytest.raises(RedisDataLostError, match="acct:account"):
            consumer.commit([delivery], b"state", [("orders", [heartbeat(2)])])
        for write in (
            lambda: bus.publish_many("bars", [heartbeat(3)]),
            lambda: bus.publish("bars", heartbeat(4)),
            lambda: consumer.dead_letter(delivery, "poison"),
        ):
            with pytest.raises(RedisDataLostError):
                write()
        assert bus.redis.dbsize() == 0
    finally:
        bus.close()


def test_a_flush_during_a_commit_aborts_it(server: EmbeddedRedis, monkeypatch) -> None:
    bus = RedisBus(server.url, "acct", give_up_after_s=5)
    other = redis.Redis.from_url(server.url)
    try:
        marker = keys.account("acct")
        bus.redis.set(marker, "created")
        bus.guard_data(marker)
        bus.publish("bars", heartbeat(1))
        consumer = bus.consumer("g", "g-1", ["bars"])
        (delivery,) = consumer.read(10)
        exchange = redis_streams._exchange

        def flush_after_the_check(connection, commands):
            replies = exchange(connection, commands)
            if commands[0][0] == "WATCH":  # the marker was there; now it goes
                other.flushall()
            return replies

        monkeypatch.setattr(redis_streams, "_exchange", flush_after_the_check)
        with pytest.raises(RedisDataLostError):
            consumer.commit([delivery], b"state", [("orders", [heartbeat(2)])])
        assert other.dbsize() == 0  # EXEC was aborted by the WATCHed marker
    finally:
        other.close()
        bus.close()
