"""A ``deepfactor run execution`` host (``services.runtime.standalone.run_service``) on a real
Redis with ``[metrics] enabled``: its endpoint answers what the service did, as Prometheus
reads it; with metrics off it opens no port."""

from __future__ import annotations

import math
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import timedelta

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.bus import RedisBus
from engine.config import load_config
from engine.events import BarSet, Control, Heartbeat, OrderRequest, make_event
from services.runtime.account import bind_account, open_account
from services.runtime.standalone import run_service
from tests.conftest import delete_namespace
from tests.events import T0, bar_set

pytestmark = pytest.mark.redis
DAY = timedelta(days=1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int) -> str | None:
    """The endpoint's exposition text; None while nothing answers on ``port``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            return answer.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None


def read(text: str, name: str, **labels: str) -> float | None:
    found = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    return found[0] if found else None


def wait_for(condition, what: str, process: ExecutionProcess, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert process.error is None, f"the process failed: {process.error!r}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


def order(sequence: int, bars: BarSet) -> OrderRequest:
    column = sequence % len(bars.symbols)
    return OrderRequest(
        client_order_id=f"df-test-rb-1-{sequence:04d}",
        rebalance_id="df-test-rb-1",
        asof=bars.bar_open + DAY,  # decided at the close of ``bars``: fills at the next open
        symbol=bars.symbols[column],
        side="buy",
        quantity=0.5 + sequence,
        reference_price=bars.close[column],
    )


class ExecutionProcess:
    """``run_service(config, "execution", ...)`` in a thread, on the account of ``run_dir``."""

    def __init__(self, redis_url: str, run_dir, **environ: str) -> None:
        self.account = open_account(run_dir, f"test-metrics-{uuid.uuid4().hex[:8]}", "replay:t")
        self.publisher = RedisBus(redis_url, self.account.namespace, give_up_after_s=5)
        bind_account(self.publisher, self.account, run_dir)  # what market-data does
        self.redis_url = redis_url
        config = load_config(
            None,
            environ={
                "DEEPFACTOR_BUS__REDIS_URL": redis_url,
                "DEEPFACTOR_BUS__BLOCK_MS": "50",
                "DEEPFACTOR_RUN__INSTANCE": "box-1",
                "DEEPFACTOR_PAPER__HEARTBEAT_S": "0.2",
                **environ,
            },
        )
        self.stop = threading.Event()
        self.error: BaseException | None = None

        def run() -> None:
            try:
                run_service(config, "execution", run_dir, stop=self.stop)
            except BaseException as error:  # shown by the next wait, not as a thread warning
                self.error = error

        self.thread = threading.Thread(target=run)

    def publish(self, *payloads) -> None:
        for payload in payloads:
            self.publisher.publish(payload.TOPIC, make_event(payload, source="test", ts=T0))

    def __enter__(self) -> ExecutionProcess:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.publisher.close()
        delete_namespace(self.redis_url, self.account.namespace)
        assert not self.thread.is_alive()
        assert self.error is None, f"the process failed: {self.error!r}"


def started(process: ExecutionProcess) -> bool:
    # The runner's first heartbeat: its consumer group exists, what it reads from then on.
    beat = process.publisher.last_event(Heartbeat.TOPIC)
    return beat is not None and beat.payload.service == "execution"


def test_the_endpoint_serves_what_the_service_did(redis_url, tmp_path):
    port = free_port()
    first = bar_set(4)
    second = msgspec.structs.replace(
        first, bar_open=first.bar_open + DAY, open=tuple(p * 1.01 for p in first.close)
    )
    halted = [order(0, first)]  # rejected: trading halted
    traded = [order(1, first), order(2, first)]  # filled at the next bar's open
    with ExecutionProcess(
        redis_url,
        tmp_path,
        DEEPFACTOR_METRICS__ENABLED="true",
        DEEPFACTOR_METRICS__PROCESS_PORT=str(port),
    ) as process:
        wait_for(lambda: scrape(port), "the endpoint", process)
        labels = {"service": "execution", "instance": "box-1"}

        def handled(kind: str, count: int) -> str | None:
            text = scrape(port)
            if text is None:
                return None
            found = read(text, "deepfactor_messages_total", event_type=kind, **labels)
            return text if found == count else None

        # One topic at a time: the order across topics is not kept (one read per stream).
        for payloads, (kind, count) in (
            ([first], ("BarSet", 1)),
            ([Control(command="halt", reason="test")], ("Control", 1)),
            (halted, ("OrderRequest", len(halted))),
            ([Control(command="resume", reason="test")], ("Control", 2)),
            (traded, ("OrderRequest", len(halted + traded))),
            ([second], ("BarSet", 2)),
        ):
            process.publish(*payloads)
            wait_for(lambda kind=kind, count=count: handled(kind, count), f"{kind}s", process)
        # Counted once their commit returned, a moment after the message itself.
        text = wait_for(
            lambda: (t := scrape(port)) and read(t, "deepfactor_fills_total", **labels) and t,
            "the fills",
            process,
        )
        assert read(text, "deepfactor_fills_total", **labels) == len(traded)
        notional = math.fsum(
            o.quantity * second.open[second.symbols.index(o.symbol)] for o in traded
        )
        assert read(text, "deepfactor_fill_notional_total", **labels) == pytest.approx(notional)
        assert read(text, "deepfactor_rejects_total", **labels) == len(halted)
        messages = {
            kind: read(text, "deepfactor_messages_total", event_type=kind, **labels)
            for kind in ("BarSet", "Control", "OrderRequest")
        }
        assert messages == {"BarSet": 2, "Control": 2, "OrderRequest": 3}
        assert read(
            text, "deepfactor_handler_seconds_count", event_type="OrderRequest", **labels
        ) == len(halted + traded)
        # Heartbeats every 0.2 s: all handled, nothing pending, nothing waiting (the lag is
        # known from Redis 7 on).
        lag = 0 if int(process.publisher.redis.info("server")["redis_version"][0]) >= 7 else None
        wait_for(
            lambda: (t := scrape(port)) and read(t, "deepfactor_stream_lag", **labels) == lag,
            "a heartbeat after the work",
            process,
        )
        assert read(scrape(port), "deepfactor_pending", **labels) == 0
    assert scrape(port) is None  # the stopped process no longer serves


def test_with_metrics_off_the_process_opens_no_port(redis_url, tmp_path):
    port = free_port()
    with ExecutionProcess(
        redis_url, tmp_path, DEEPFACTOR_METRICS__PROCESS_PORT=str(port)
    ) as process:
        wait_for(lambda: started(process), "the service", process)
        process.publish(bar_set(4))
        time.sleep(0.5)  # running, heartbeats sent
        assert scrape(port) is None
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))  # nothing holds it
