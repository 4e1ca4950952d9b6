"""Encode events to JSON bytes and decode them back, validating every field.

JSON keeps messages readable in ``redis-cli``; msgspec makes it cheap (a 20-asset BarSet
round-trips in a few microseconds, see ``benchmarks/bus.py``). Decoding goes in two steps: the
envelope first, with the payload left as raw bytes, then the payload with the struct its
``type`` names, so an unknown type is reported as such rather than as a shape mismatch.
"""

from __future__ import annotations

import msgspec

from engine.errors import EventDecodeError
from engine.events.base import Envelope, EventPayload, UtcDatetime
from engine.events.decision import RebalanceDue, Signal, TargetPortfolio
from engine.events.market import BarBlock, BarSet, FactorSnapshot
from engine.events.operations import Control, Heartbeat, RiskAlert
from engine.events.trading import (
    Fill,
    OrderRequest,
    OrderUpdate,
    PortfolioMarks,
    PortfolioSnapshot,
)

PAYLOAD_TYPES: tuple[type[EventPayload], ...] = (
    BarSet,
    BarBlock,
    FactorSnapshot,
    Signal,
    RebalanceDue,
    TargetPortfolio,
    OrderRequest,
    OrderUpdate,
    Fill,
    PortfolioSnapshot,
    PortfolioMarks,
    RiskAlert,
    Control,
    Heartbeat,
)
PAYLOAD_BY_TYPE: dict[str, type[EventPayload]] = {cls.TYPE: cls for cls in PAYLOAD_TYPES}


class _WireEnvelope(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str
    type: str
    v: int
    ts: UtcDatetime
    source: str
    corr: str
    payload: msgspec.Raw


def _typed_wire(payload_type: type[EventPayload]) -> type[msgspec.Struct]:
    return msgspec.defstruct(
        f"_Wire{payload_type.TYPE}",
        [
            (name, msgspec.structs.fields(_WireEnvelope)[i].type)
            for i, name in enumerate(_WireEnvelope.__struct_fields__)
            if name != "payload"
        ]
        + [("payload", payload_type)],
        frozen=True,
        kw_only=True,
        forbid_unknown_fields=True,
    )


_encoder = msgspec.json.Encoder()
_wire_decoder = msgspec.json.Decoder(_WireEnvelope)
_payload_decoders = {name: msgspec.json.Decoder(cls) for name, cls in PAYLOAD_BY_TYPE.items()}
_typed_decoders = {
    name.encode(): (cls.VERSION, msgspec.json.Decoder(_typed_wire(cls)))
    for name, cls in PAYLOAD_BY_TYPE.items()
}
# Our encoder writes fields in declaration order, so "type" sits right after the 32-char id.
_TYPE_MARK = b'"type":"'


def encode(event: Envelope) -> bytes:
    """Return the JSON bytes of ``event``."""
    return _encoder.encode(event)


def _field_and_problem(error: msgspec.MsgspecError, prefix: str) -> tuple[str, str]:
    # msgspec says "Expected `int`, got `str` - at `$.payload.qty`"; split the path off.
    message = str(error)
    problem, separator, path = message.rpartition(" - at `")
    if not separator:
        return prefix or "<message>", message
    path = path.rstrip("`").removeprefix("$").removeprefix(".")
    field = (
        ".".join(part for part in (prefix, path) if part)
        if not path.startswith("[")
        else (f"{prefix}{path}")
    )
    return field or "<message>", problem


def decode(data: bytes | bytearray | memoryview | str) -> Envelope:
    """Return the event encoded in ``data``.

    The fast path reads the type near the start and decodes envelope and payload in one
    pass; anything unusual (other field order, an error) takes the two-step path, which
    also produces the precise error.

    Raises
    ------
    EventDecodeError
        When the bytes are not JSON, the envelope or payload fails validation, the type is
        unknown, or the schema version is newer than this build understands. The error names
        the field and the problem.
    """
    if isinstance(data, bytes):
        start = data.find(_TYPE_MARK, 0, 64)
        if start > 0:
            start += len(_TYPE_MARK)
            known = _typed_decoders.get(data[start : data.find(b'"', start, start + 40)])
            if known is not None:
                try:
                    typed = known[1].decode(data)
                except msgspec.MsgspecError:
                    pass  # diagnose below
                else:
                    if 1 <= typed.v <= known[0]:
                        return Envelope(
                            id=typed.id,
                            type=typed.type,
                            v=typed.v,
                            ts=typed.ts,
                            source=typed.source,
                            corr=typed.corr,
                            payload=typed.payload,
                        )
    return _decode_two_step(data)


def _decode_two_step(data: bytes | bytearray | memoryview | str) -> Envelope:
    try:
        wire = _wire_decoder.decode(data)
    except msgspec.ValidationError as error:
        raise EventDecodeError(*_field_and_problem(error, "")) from None
    except msgspec.DecodeError as error:
        raise EventDecodeError("<message>", f"not a JSON event: {error}") from None
    payload_decoder = _payload_decoders.get(wire.type)
    if payload_decoder is None:
        raise EventDecodeError(
            "type", f"unknown event type {wire.type!r}; known: {', '.join(sorted(PAYLOAD_BY_TYPE))}"
        )
    known_version = PAYLOAD_BY_TYPE[wire.type].VERSION
    if not 1 <= wire.v <= known_version:
        raise EventDecodeError(
            "v",
            f"{wire.type} schema version {wire.v} is not understood by this build "
            f"(supports 1..{known_version})",
        )
    try:
        payload = payload_decoder.decode(wire.payload)
    except msgspec.MsgspecError as error:
        raise EventDecodeError(*_field_and_problem(error, "payload")) from None
    return Envelope(
        id=wire.id,
        type=wire.type,
        v=wire.v,
        ts=wire.ts,
        source=wire.source,
        corr=wire.corr,
        payload=payload,
    )
