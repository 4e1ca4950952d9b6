"""A consumer run as its own process, so a test can kill it with SIGKILL mid-message.

Its handler is idempotent by event id, the way DESIGN.md asks every handler to be: the effect
is written with HSETNX under the event id, and every invocation is counted separately so the
test can see a redelivery happen without a second effect.
"""

from __future__ import annotations

import sys
import threading
import time

from engine.bus import ConsumerLoop, ConsumeSettings, RedisBus
from engine.events import Envelope


def main(url: str, namespace: str, stall_on: int) -> None:
    bus = RedisBus(url, namespace, give_up_after_s=10)
    client = bus.redis

    def handler(event: Envelope) -> None:
        sequence = event.payload.processed
        client.hincrby(f"{namespace}:invocations", event.id, 1)
        if sequence == stall_on:
            client.set(f"{namespace}:stalled", event.id)
            time.sleep(3600)  # killed here, holding the message unacknowledged
        client.hsetnx(f"{namespace}:effects", event.id, sequence)

    settings = ConsumeSettings(
        batch_size=100,
        block_ms=100,
        claim_idle_ms=60_000,
        reclaim_interval_ms=60_000,
        max_deliveries=5,
    )
    loop = ConsumerLoop(bus.consumer("svc", "doomed", ["alpha"]), handler, settings)
    loop.run(threading.Event())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
