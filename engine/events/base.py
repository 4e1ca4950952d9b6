"""Shared building blocks of every event: the payload base class, constrained field types, and
the envelope that carries a payload across the bus."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, ClassVar

import msgspec

from engine.events.ids import new_event_id

UtcDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
Symbol = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]


class EventPayload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """Base of every typed payload.

    Subclasses set ``TYPE`` (the envelope's ``type``), ``VERSION`` (bumped on any change of
    fields, since unknown fields are rejected) and ``TOPIC`` (the stream it is published on
    by default). Payloads are frozen: a message is never mutated after it is made. They hold
    only numbers, strings, times and containers of those, so they can never be part of a
    reference cycle: ``gc=False`` keeps the millions a backtest makes out of the collector's
    scans.
    """

    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    TOPIC: ClassVar[str] = ""


class Envelope(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """What travels on the bus: identity, time, provenance and a typed payload.

    ``corr`` ties every event of one cycle (a bar, a rebalance) together, so one grep of the
    logs shows the whole chain from bar to fill.
    """

    id: str
    type: str
    v: int
    ts: UtcDatetime
    source: str
    corr: str
    payload: EventPayload

    @property
    def topic(self) -> str:
        """Return the default topic of this event's payload type."""
        return self.payload.TOPIC


def make_event(
    payload: EventPayload,
    *,
    source: str,
    corr: str | None = None,
    ts: datetime | None = None,
    event_id: str | None = None,
) -> Envelope:
    """Wrap ``payload`` in a fresh envelope; ``corr`` defaults to the new event's own id."""
    if ts is None:
        ts = datetime.now(UTC)
    elif ts.tzinfo is None:
        raise ValueError(f"event time must be timezone-aware UTC, received naive {ts.isoformat()}")
    new_id = event_id or new_event_id()
    return Envelope(
        id=new_id,
        type=payload.TYPE,
        v=payload.VERSION,
        ts=ts,
        source=source,
        corr=corr or new_id,
        payload=payload,
    )
