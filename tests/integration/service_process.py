"""A stateful service run as its own process through ``ServiceRunner``, which kills itself
with SIGKILL right after the handler of one chosen event returned: its effects are staged in
the service's outbox, and its commit (outbox, acknowledgement and state) never happens.

Usage: ``python -m tests.integration.service_process SERVICE FILL_PRICE URL NAMESPACE KILL_AT``
with SERVICE ``rebalance`` or ``execution`` (built by ``tests.restarts``, instance
``box-1``) and KILL_AT the event id to die after.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading

from engine.bus import RedisBus
from engine.events import Envelope
from services.runtime.loop import ServiceRunner
from tests.restarts import INSTANCE, SETTINGS, make_execution, make_rebalance


def main(service_name: str, fill_price: str, url: str, namespace: str, kill_at: str) -> None:
    make = make_rebalance if service_name == "rebalance" else make_execution
    bus = RedisBus(url, namespace, give_up_after_s=10)
    service = make(fill_price)(bus)
    runner = ServiceRunner(service, SETTINGS, heartbeat_s=3600, instance=INSTANCE)
    handle = service.handle

    def handler(event: Envelope) -> None:
        handle(event)
        if event.id == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # handled, staged, not committed

    runner.loop.handler = handler
    runner.loop.settings = dataclasses.replace(runner.loop.settings, block_ms=50)
    runner.run(threading.Event())


if __name__ == "__main__":
    main(*sys.argv[1:6])
