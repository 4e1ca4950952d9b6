"""Build the bus a config asks for: a Redis URL, or a private server in the run directory."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import structlog

from engine.bus.embedded import EmbeddedRedis
from engine.bus.processing import ConsumeSettings
from engine.bus.redis_streams import RedisBus
from engine.config import Config

log = structlog.get_logger("engine.bus")


def consume_settings(config: Config) -> ConsumeSettings:
    """Return the consumer-loop pacing of ``config``."""
    bus = config.bus
    return ConsumeSettings(
        batch_size=bus.batch_size,
        block_ms=bus.block_ms,
        claim_idle_ms=bus.claim_idle_ms,
        reclaim_interval_ms=bus.reclaim_interval_ms,
        max_deliveries=bus.max_deliveries,
    )


@contextlib.contextmanager
def open_redis_bus(
    config: Config, run_dir: str | Path | None = None, stop: threading.Event | None = None
) -> Iterator[RedisBus]:
    """Yield a connected ``RedisBus``; start (and finally stop) a private server if no URL."""
    embedded: EmbeddedRedis | None = None
    url = config.bus.redis_url
    if not url:
        embedded = EmbeddedRedis(Path(run_dir or config.run.run_dir) / "redis")
        url = embedded.start()
    bus = RedisBus(
        url,
        config.run.namespace,
        stream_maxlen=config.bus.stream_maxlen,
        processed_retention_s=config.bus.processed_retention_s,
        reconnect_max_delay_s=config.bus.reconnect_max_delay_s,
        socket_timeout_s=config.bus.block_ms / 1000 + 10,
        stop=stop,
    )
    try:
        bus.ping()
        log.info(
            "bus.connected", url=url, namespace=config.run.namespace, embedded=embedded is not None
        )
        yield bus
    finally:
        bus.close()
        if embedded is not None:
            embedded.stop()
