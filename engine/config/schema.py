"""The typed, frozen shape of a deepfactor config file.

Sections mirror the TOML tables; every field has a default, so an empty file is a valid paper
config. Constraints live in the types, so a bad value fails at start-up, never mid-run.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class RunConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where a run keeps its files and which Redis namespace it owns."""

    namespace: Name = "deepfactor"
    run_dir: str = "runs/paper"


class BusConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Redis Streams bus settings.

    ``redis_url`` empty means: start a private redis-server under the run directory.
    ``claim_idle_ms`` is how long a message may sit unacked with a consumer before another
    instance takes it over; it must exceed the slowest handler, or live work gets stolen.
    """

    redis_url: str = ""
    block_ms: PositiveInt = 1000
    batch_size: PositiveInt = 256
    claim_idle_ms: NonNegativeInt = 30_000
    reclaim_interval_ms: PositiveInt = 5_000
    max_deliveries: PositiveInt = 5
    stream_maxlen: PositiveInt = 100_000
    processed_retention_s: PositiveInt = 7 * 24 * 3600
    reconnect_max_delay_s: PositiveFloat = 10.0


class LogConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Log level and format; ``auto`` means console in a terminal, JSON lines otherwise."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Config(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A whole deepfactor config, as validated at start-up."""

    run: RunConfig = RunConfig()
    bus: BusConfig = BusConfig()
    log: LogConfig = LogConfig()
