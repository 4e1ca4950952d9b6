"""A service run as its own process through ``ServiceRunner``, so a test can kill it with SIGKILL
mid-batch and start it again under the same instance name.

Usage: ``python -m tests.integration.bus.consumer_process URL NAMESPACE STALL_ON [INSTANCE
[COMMIT_EACH]]``. The service (group ``svc``, consumer ``svc-{INSTANCE}``) reads topic
``alpha``. Its handler is not idempotent: every invocation is appended to the list
``{namespace}:calls`` (by sequence number) and every effect counted with HINCRBY in the hash
``{namespace}:effects`` (by event id), so a test sees each redelivery, and any effect applied
twice. On the event numbered ``STALL_ON`` it records ``{namespace}:stalled`` and hangs before
its effect: the test kills it there, holding the message unacknowledged. ``COMMIT_EACH`` set to
1 turns on the service's per-message commit. ``claim_idle_ms`` is a minute, so whatever this
process handles of a dead member's entries within a test it got without reclaim.
"""

from __future__ import annotations

import sys
import threading
import time

from engine.bus import ConsumeSettings, RedisBus
from engine.clock import WallClock
from engine.events import Envelope, Heartbeat
from services.runtime.loop import Handler, Service, ServiceRunner

SETTINGS = ConsumeSettings(
    batch_size=100,
    block_ms=100,
    claim_idle_ms=60_000,
    reclaim_interval_ms=60_000,
    max_deliveries=5,
)


def main(
    url: str, namespace: str, stall_on: int, instance: str = "box-1", commit_each: bool = False
) -> None:
    bus = RedisBus(url, namespace, give_up_after_s=10)
    client = bus.redis

    class Doomed(Service):
        name = "svc"
        commit_each_message = commit_each

        @property
        def topics(self) -> tuple[str, ...]:
            return ("alpha",)

        def handlers(self) -> dict[type, Handler]:
            return {Heartbeat: self.on_event}

        def on_event(self, event: Envelope) -> None:
            sequence = event.payload.processed
            client.rpush(f"{namespace}:calls", sequence)
            if sequence == stall_on:
                client.set(f"{namespace}:stalled", event.id)
                time.sleep(3600)  # killed here, holding the message unacknowledged
            client.hincrby(f"{namespace}:effects", event.id, 1)

    runner = ServiceRunner(Doomed(bus, WallClock()), SETTINGS, heartbeat_s=3600, instance=instance)
    client.set(f"{namespace}:consumer", runner.consumer_name)
    runner.run(threading.Event())


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(
        arguments[0],
        arguments[1],
        int(arguments[2]),
        *arguments[3:4],
        *[argument == "1" for argument in arguments[4:5]],
    )
