"""Know when every consumer group has caught up with every stream: the replay's back-pressure.

One atomic MULTI of XINFO STREAM / XINFO GROUPS gives a consistent picture: a handler that is
still working holds its message pending, and whatever it publishes is XADDed before it acks,
so "every group delivered up to the last id with nothing pending" means nothing is in flight.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis

from engine.bus import RedisBus, keys


class RedisQuiescence:
    """Poll Redis until the given (group, topics) pairs have nothing left to do."""

    def __init__(self, bus: RedisBus, groups: Iterable[tuple[str, Iterable[str]]]) -> None:
        self._bus = bus
        self._groups_by_key: dict[str, set[str]] = {}
        for group, topics in groups:
            for topic in topics:
                key = keys.stream(bus.namespace, topic)
                self._groups_by_key.setdefault(key, set()).add(group)

    def caught_up(self) -> bool:
        """Return True when every group has consumed and acknowledged everything."""

        def check() -> bool:
            pipe = self._bus.redis.pipeline(transaction=True)
            for key in self._groups_by_key:
                pipe.xinfo_stream(key)
                pipe.xinfo_groups(key)
            try:
                replies = pipe.execute()
            except redis.ResponseError:
                return False  # a stream or group not created yet: someone is still starting
            for position, key in enumerate(self._groups_by_key):
                last_id = replies[2 * position]["last-generated-id"]
                groups = {
                    g["name"].decode() if isinstance(g["name"], bytes) else g["name"]: g
                    for g in replies[2 * position + 1]
                }
                for group in self._groups_by_key[key]:
                    state = groups.get(group)
                    if state is None or state["pending"] or state["last-delivered-id"] != last_id:
                        return False
            return True

        return self._bus.call("quiescence", check)

    def wait(self, timeout_s: float = 30.0, poll_s: float = 0.001) -> bool:
        """Wait until caught up; return False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        while not self.caught_up():
            if time.monotonic() > deadline:
                return False
            time.sleep(poll_s)
        return True
