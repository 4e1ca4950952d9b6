"""A Sentinel-managed Redis (``redis+sentinel://``): the bus finds the primary through a real
sentinel, and when the primary is killed (SIGKILL) and the sentinel promotes its replica, the
same bus object goes on publishing and consuming on the new primary without losing a message
that had been replicated. Three real redis-server processes (primary, replica, sentinel) on
private ports, never the shared server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from engine.bus import RedisBus, keys
from engine.bus.embedded import find_redis_server
from engine.config import load_config
from engine.errors import ConfigError
from engine.process import die_with_parent
from tests.events import heartbeat

PRIMARY = "acct-primary"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s}s")
        time.sleep(0.05)


class Servers:
    """A primary, its replica and one sentinel watching them, each a redis-server process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.binary = find_redis_server()
        self.ports = {"primary": free_port(), "replica": free_port(), "sentinel": free_port()}
        self.processes: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, *arguments: str) -> None:
        directory = self.root / name
        directory.mkdir()
        with (directory / "server.log").open("wb") as log:
            self.processes[name] = subprocess.Popen(
                [self.binary, *arguments], cwd=directory, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )  # fmt: skip
        port = self.ports[name]
        wait_for(lambda: self.client(name).ping(), 10, f"{name} on port {port}")

    def client(self, name: str) -> redis.Redis:
        return redis.Redis(port=self.ports[name], socket_timeout=1, socket_connect_timeout=1)

    def start(self) -> None:
        common = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
        self._start("primary", "--port", str(self.ports["primary"]), *common)
        replica_of = ("--replicaof", "127.0.0.1", str(self.ports["primary"]))
        self._start("replica", "--port", str(self.ports["replica"]), *common, *replica_of)
        config = self.root / "sentinel.conf"
        config.write_text(
            f"port {self.ports['sentinel']}\nbind 127.0.0.1\ndir {self.root}\n"
            f"sentinel monitor {PRIMARY} 127.0.0.1 {self.ports['primary']} 1\n"
            f"sentinel down-after-milliseconds {PRIMARY} 400\n"
            f"sentinel failover-timeout {PRIMARY} 2000\n"
        )
        self._start("sentinel", str(config), "--sentinel")
        replica = self.client("replica")
        wait_for(lambda: replica.info("replication")["master_link_status"] == "up", 15, "sync")
        sentinel = self.client("sentinel")
        # The sentinel learns of the replica from the primary's INFO (every 10 s at first).
        wait_for(lambda: sentinel.sentinel_slaves(PRIMARY), 20, "the sentinel sees the replica")

    def kill(self, name: str) -> None:
        process = self.processes[name]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)


@pytest.fixture
def servers(short_tmp: Path):
    started = Servers(short_tmp)
    try:
        started.start()
        yield started
    finally:
        started.stop()


def test_the_bus_follows_a_failover_without_losing_replicated_messages(servers: Servers) -> None:
    url = f"redis+sentinel://127.0.0.1:{servers.ports['sentinel']}/{PRIMARY}/0"
    bus = RedisBus(url, "acct", give_up_after_s=30, reconnect_max_delay_s=0.1)
    try:
        marker = keys.account("acct")
        bus.redis.set(marker, "created")
        bus.guard_data(marker)
        consumer = bus.consumer("recorder", "recorder-1", ["heartbeat"])
        for i in range(5):
            bus.publish("heartbeat", heartbeat(i))
        first = consumer.read(10)
        consumer.ack(first)
        assert [d.event.payload.processed for d in first] == list(range(5))
        assert bus.redis.wait(1, 5000) == 1  # the replica holds all of it

        servers.kill("primary")
        killed_at = time.monotonic()
        for i in range(5, 10):  # waits for the promotion, then lands on the new primary
            bus.publish("heartbeat", heartbeat(i))
        took = time.monotonic() - killed_at
        second = consumer.read(10)
        consumer.ack(second)

        assert [d.event.payload.processed for d in second] == list(range(5, 10))
        assert consumer.pending_count() == 0
        address = servers.client("sentinel").sentinel_get_master_addr_by_name(PRIMARY)
        assert int(address[1]) == servers.ports["replica"], "the replica was promoted"
        promoted = servers.client("replica")
        assert promoted.xlen("acct:heartbeat") == 10 and promoted.exists(marker)
        assert took < 20, took
    finally:
        bus.close()


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+sentinel://127.0.0.1:26379/", "no primary name"),
        ("redis+sentinel://127.0.0.1:x/acct", "port is not a number"),
        ("redis+sentinel://127.0.0.1/acct/zero", "database 'zero' is not a number"),
        ("sentinel://127.0.0.1/acct", "must start with redis://"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_naming_the_key(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={"DEEPFACTOR_BUS__REDIS_URL": url})
    assert "[bus] redis_url" in str(caught.value) and complaint in str(caught.value)


def test_a_sentinel_url_password_is_redacted_and_only_taken_from_the_environment(
    tmp_path: Path,
) -> None:
    from engine.bus.redis_streams import redact_url

    url = "redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2/acct/1"
    assert redact_url(url) == "redis+sentinel://:***@10.0.0.1:26379,10.0.0.2/acct/1"
    config = load_config(None, environ={"DEEPFACTOR_BUS__REDIS_URL": url})
    assert config.bus.redis_url == url
    file = tmp_path / "c.toml"
    file.write_text(f'[bus]\nredis_url = "{url}"\n')
    with pytest.raises(ConfigError, match="carries a password"):
        load_config(file, environ={})
