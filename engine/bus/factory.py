"""Build the bus a config asks for: a Redis URL, or a private server in the run directory."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import structlog

from engine.bus.embedded import EmbeddedRedis
from engine.bus.processing import ConsumeSettings
from engine.bus.redis_streams import RedisBus, redact_url
from engine.config import Config
from engine.errors import BusUnavailableError

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


def _cut_when_stopped(bus: RedisBus, stop: threading.Event, done: threading.Event) -> None:
    # Once stopping, probe Redis now and then: a server that hangs (stopped, overloaded) must
    # not hold every thread of the run for a socket timeout each.
    while not done.is_set():
        if not stop.wait(0.5) or done.is_set():
            continue
        if bus.cut_if_unresponsive():
            return
        done.wait(2.0)


def _fail_when_server_dies(bus: RedisBus, embedded: EmbeddedRedis, done: threading.Event) -> None:
    # The private server dying under the run (killed, out of memory) would leave every thread
    # retrying forever: fail the bus, so the run stops with an error naming it. Its
    # append-only file holds the account: the same command continues it.
    process = embedded.process
    while process is not None and not done.wait(0.2):
        code = process.poll()
        if code is None:
            continue
        if done.is_set():  # stopped by the run itself
            return
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        log.error("bus.embedded_redis_died", pid=process.pid, how=how, url=embedded.url)
        bus.fail(
            f"the embedded redis-server (pid {process.pid}, {embedded.data_dir}) {how} during "
            "the run; the run stopped. Run the same command again to continue the account "
            "from its append-only file"
        )
        return


@contextlib.contextmanager
def open_redis_bus(
    config: Config, run_dir: str | Path | None = None, stop: threading.Event | None = None
) -> Iterator[RedisBus]:
    """Yield a connected ``RedisBus``; start (and finally stop) a private server if no URL.

    The first contact is bounded: a Redis that does not answer within ``[bus]
    connect_timeout_s`` (or before ``stop`` is set) raises ``BusUnavailableError`` naming the
    URL (password redacted). Once connected, the bus waits out outages without a limit
    (``stop`` still cuts a wait short).
    """
    embedded: EmbeddedRedis | None = None
    done = threading.Event()
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
        give_up_after_s=config.bus.connect_timeout_s,
        stop=stop,
    )
    try:
        try:
            bus.ping()
        except BusUnavailableError as error:
            cause = error.__cause__ or error
            why = (
                "stopped (signal) before it answered"
                if stop is not None and stop.is_set()
                else f"no answer within [bus] connect_timeout_s = {config.bus.connect_timeout_s:g}s"
            )
            log.error("bus.connect_failed", url=redact_url(url), reason=why, error=str(cause))
            raise BusUnavailableError(
                f"cannot connect to Redis at {redact_url(url)}: {why} (last error: {cause})"
            ) from None
        bus.give_up_after_s = None  # connected: outages from here on are waited out
        if stop is not None:
            threading.Thread(
                target=_cut_when_stopped, args=(bus, stop, done), name="bus-stop", daemon=True
            ).start()
        if embedded is not None:
            threading.Thread(
                target=_fail_when_server_dies,
                args=(bus, embedded, done),
                name="bus-embedded",
                daemon=True,
            ).start()
        log.info(
            "bus.connected",
            url=redact_url(url),
            namespace=config.run.namespace,
            embedded=embedded is not None,
        )
        yield bus
    finally:
        done.set()
        bus.close()
        if embedded is not None:
            embedded.stop()
