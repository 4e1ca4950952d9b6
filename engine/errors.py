"""One root error for deepfactor, with a few families callers can catch.

Library errors (redis, msgspec, tomllib) are translated at the edge into these, so a caller
never needs to know which library failed underneath.
"""

from __future__ import annotations


class DeepfactorError(Exception):
    """Root of every error deepfactor raises on purpose."""


class ConfigError(DeepfactorError):
    """A config file or environment override is invalid; the message names file, key and value."""


class EventDecodeError(DeepfactorError):
    """A message could not be decoded into a known, valid event.

    Parameters
    ----------
    field
        Where the problem is, as a dotted path (``payload.close[3]``), or ``"<message>"`` when the
        bytes are not a readable message at all.
    problem
        What is wrong there, in words.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"bad event at {field}: {problem}")


class BusError(DeepfactorError):
    """The event bus failed in a way a caller should see."""


class BusUnavailableError(BusError):
    """Redis stayed unreachable for longer than the caller was willing to wait."""


class UsageError(DeepfactorError):
    """A command-line argument is unusable (an output path that cannot be written, a negative
    count); the message names the option and the value."""


class DataError(DeepfactorError):
    """Market data is malformed; the message names the file, the row or symbol, and why."""
