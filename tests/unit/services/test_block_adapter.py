"""The block adapter (``Service.handle_rows``): a backtest's block event reaches a service with
no matrix path for it as its rows, one by one, each in an envelope of the row type that keeps
the block's id, correlation and time; a service with a matrix path keeps its own handler."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from engine.bus import MemoryBus
from engine.clock import SimulatedClock
from engine.events import BarBlock, BarSet, Envelope, make_event
from services.runtime.loop import Service

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def block() -> BarBlock:
    close = np.array([[1.0, 2.0], [np.nan, 2.5], [1.25, np.nan]])
    return BarBlock.from_matrices(
        timeframe="1d",
        bar_open=tuple(T0 + timedelta(days=i) for i in range(3)),
        symbols=("A", "B"),
        open=close,
        high=close,
        low=close,
        close=close,
        volume=None,
    )


class BarsOnly(Service):
    name = "bars-only"

    def __init__(self, bus, clock) -> None:
        self.seen: list[Envelope] = []
        super().__init__(bus, clock)

    def handlers(self):
        return {BarSet: self.seen.append}


class WithMatrixPath(BarsOnly):
    name = "matrix"

    def handlers(self):
        return {BarSet: self.seen.append, BarBlock: self.seen.append}


def test_a_block_reaches_a_bars_only_service_as_its_rows() -> None:
    service = BarsOnly(MemoryBus(), SimulatedClock(T0))
    event = make_event(block(), source="market-data", corr="bar-7", ts=T0)
    service.handle(event)
    expected = block().rows()
    assert [e.payload for e in service.seen] == expected
    # Built independently of rows(): a bar per row with any close, closes as given.
    assert [e.payload.close for e in service.seen] == [(1.0, 2.0), (2.5,), (1.25,)]
    assert [e.payload.symbols for e in service.seen] == [("A", "B"), ("B",), ("A",)]
    assert {(e.type, e.id, e.corr, e.ts, e.source) for e in service.seen} == {
        ("BarSet", event.id, "bar-7", T0, "market-data")
    }


def test_a_service_with_a_matrix_path_gets_the_block_whole() -> None:
    service = WithMatrixPath(MemoryBus(), SimulatedClock(T0))
    event = make_event(block(), source="market-data", corr="bar-7", ts=T0)
    service.handle(event)
    assert service.seen == [event]


def test_the_block_handlers_of_the_daemons_are_theirs_or_the_adapter() -> None:
    # Every daemon that reads bars takes a block: through its own matrix path, or as rows.
    from engine.config import load_config
    from services.runtime.assembly import build_services

    config = load_config(None, environ={})
    bus, clock = MemoryBus(), SimulatedClock(T0)
    for service in build_services(config, bus, clock).all():
        if BarSet in service._dispatch:
            assert BarBlock in service._dispatch, service.name
