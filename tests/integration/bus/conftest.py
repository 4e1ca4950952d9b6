"""What the bus tests share: one bus per simulated process, on each kind of bus."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from engine.bus import Bus, MemoryBus, RedisBus


@pytest.fixture(params=["memory", "redis"])
def bus_factory(request: pytest.FixtureRequest) -> Iterator[Callable[[], Bus]]:
    """Return a function giving handles on one shared bus (one per simulated process)."""
    if request.param == "memory":
        shared = MemoryBus()
        yield lambda: shared
        return
    redis_url = request.getfixturevalue("redis_url")
    namespace = request.getfixturevalue("namespace")
    made: list[RedisBus] = []

    def make() -> Bus:
        bus = RedisBus(redis_url, namespace, give_up_after_s=5)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.close()
