"""The bus interface every implementation honours (and the shared contract suite checks).

A bus is a set of append-only topics. Consumers join a group per service: a group sees every
message of its topics once, its members split the work, and a message stays pending with the
member that read it until that member acknowledges it. A member's name is stable across
restarts: a member created again under a name that holds pending messages reads those first,
in order, before anything new. Pending messages of a member that died for good are reclaimed
by another member after ``claim_idle_ms``. Those are Redis Streams' semantics; the in-memory
bus reproduces them in one process so backtests exercise the same paths.

A group may also keep one state snapshot (opaque bytes): ``Consumer.commit`` writes it in the
same atomic step as the acknowledgements it goes with, and ``Bus.load_state`` reads it back
when the service starts. State and acknowledgements can therefore never disagree: what the
snapshot has not applied is exactly what is still pending.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from engine.errors import BusError, EventDecodeError
from engine.events import Envelope

_TOPIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
RESERVED_TOPICS = frozenset({"deadletter", "processed"})


def stream_id_order(message_id: str) -> tuple[int, int]:
    """A stream id "N-M" as the pair of numbers it is ordered by (Redis's order, and the
    in-memory bus's, whose ids are all "N-0")."""
    first, _, second = message_id.partition("-")
    return int(first), int(second or 0)


def check_topic(topic: str) -> str:
    """Return ``topic`` if it is a valid, unreserved topic name, else raise BusError."""
    if not _TOPIC_NAME.match(topic) or topic in RESERVED_TOPICS:
        raise BusError(
            f"topic {topic!r} is invalid: expected lower-case letters, digits and '_', "
            f"starting with a letter, and none of {sorted(RESERVED_TOPICS)}"
        )
    return topic


class Delivery(msgspec.Struct, frozen=True, gc=False):
    """One message handed to one consumer.

    ``attempts`` counts deliveries of this message to the group, this one included. Exactly
    one of ``event`` and ``error`` is set: a message that failed to decode is still delivered,
    so the consumer can dead-letter it with the reason instead of losing it. A msgspec Struct
    rather than a frozen dataclass: one is made per message, and this is ~10x cheaper to build.
    """

    topic: str
    message_id: str
    attempts: int
    event: Envelope | None
    error: EventDecodeError | None = None
    data: bytes | None = None


# Events to append in a commit: (topic, events) in the order they were emitted.
Outbox = Sequence[tuple[str, Sequence[Envelope]]]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message taken out of circulation, with the reason and where it came from."""

    topic: str
    group: str
    consumer: str
    message_id: str
    attempts: int
    reason: str
    data: bytes


class Consumer(ABC):
    """One member of a consumer group, reading a fixed set of topics."""

    group: str
    name: str
    topics: tuple[str, ...]

    @abstractmethod
    def read(self, count: int, block_ms: int = 0) -> list[Delivery]:
        """Return up to ``count`` messages never delivered to this group, waiting up to
        ``block_ms`` for the first (0: do not wait).

        The first reads of a member return instead the messages already pending under its
        name (an earlier member of that name died holding them), in order per topic and each
        counted as one more delivery, until none is left; only then come new messages (the
        read that hands out the last of them fills the rest of ``count`` with new ones, without
        waiting).
        """

    @abstractmethod
    def reclaim(self, min_idle_ms: int, count: int) -> list[Delivery]:
        """Take over and return up to ``count`` of the group's messages that have been pending
        with any member (this one included) for at least ``min_idle_ms``."""

    @abstractmethod
    def already_processed(self, event_ids: Sequence[str]) -> list[bool]:
        """Return, per event id, whether this group has already applied that event."""

    @abstractmethod
    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge deliveries: they leave the pending list for good."""

    @abstractmethod
    def commit(
        self,
        deliveries: Sequence[Delivery],
        state: bytes | None = None,
        publish: Outbox = (),
    ) -> None:
        """Mark processed and acknowledge in one step (one round trip on Redis).

        ``state``, when given, is the group's state snapshot once these deliveries are applied
        (``Bus.load_state`` returns it): it is written in the same atomic step, so the state a
        restarted service loads always matches the messages it will not see again, and every
        message still pending is one the snapshot has not applied.

        ``publish`` holds the events the handlers of these deliveries emitted, by topic: they
        are appended in the same atomic step (a transactional outbox), so a crash either
        publishes them with the state and the acknowledgement or publishes nothing, and the
        message handled again emits them once.
        """

    @abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a delivery to the dead-letter stream with ``reason`` and acknowledge it."""

    @abstractmethod
    def pending_count(self) -> int:
        """Return how many of the group's messages are delivered but not acknowledged."""

    def backlog(self) -> int | None:
        """Messages on this group's topics not yet delivered to it (its lag), or None where
        the bus cannot tell (Redis before 7)."""
        return None

    @abstractmethod
    def guard_duplicates(self) -> None:
        """From now on, let a commit publish only while no member of the group applied its
        events yet; a commit that finds them applied only acknowledges its deliveries and
        publishes nothing (``bus.commit_superseded``). For a group whose members consume at
        once without a lease (signal): a member that stalled past ``claim_idle_ms`` and lost
        its message to another member's reclaim must not publish that message's outputs a
        second time. The check and the commit are one atomic step, so of two members
        committing one message exactly one publishes. Commit one delivery at a time with it
        (``commit_each_message``): an outbox cannot be split by delivery, and a batch of
        which only part was applied elsewhere raises ``BusError``."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op where nothing is held
        """Release resources; unacknowledged deliveries stay pending for reclaim."""


class Bus(ABC):
    """Publish to topics and hand out group consumers."""

    namespace: str

    @abstractmethod
    def publish(self, topic: str, event: Envelope) -> str:
        """Append ``event`` to ``topic`` and return its message id."""

    @abstractmethod
    def publish_many(self, topic: str, events: Sequence[Envelope]) -> list[str]:
        """Append several events to ``topic`` in one step and return their message ids."""

    @abstractmethod
    def publish_raw(self, topic: str, data: bytes) -> str:
        """Append already-encoded bytes (replay, or tests of malformed input)."""

    @abstractmethod
    def consumer(self, group: str, name: str, topics: Sequence[str]) -> Consumer:
        """Return member ``name`` of ``group`` on ``topics``, creating the group if needed.

        A new group starts at the beginning of each topic, so nothing published before the
        first consumer joined is missed. ``name`` should be stable across restarts of one
        instance (never a pid), so a restarted member picks up its own pending messages first.
        """

    @abstractmethod
    def last_event(self, topic: str) -> Envelope | None:
        """Return the newest event of ``topic`` (None if it has none): where a producer that
        restarts (a replay, a scheduler) finds how far it had got."""

    @abstractmethod
    def consumed_history(self, group: str, topic: str, count: int | None) -> list[Envelope]:
        """Return the last ``count`` events (all of them for None) of ``topic`` that ``group``
        has consumed and acknowledged, oldest first: what a restarted service replays to
        rebuild its state (messages still pending are read again first by a member of the same
        name, so they are left out here). Trimmed topics keep only their last entries."""

    @abstractmethod
    def history_until(
        self, topic: str, message_id: str, count: int, after: str | None = None
    ) -> list[tuple[str, Envelope]]:
        """Return the last ``count`` events of ``topic`` whose message id is at most
        ``message_id`` (and above ``after`` when given), oldest first, each with its message id.

        What any member of any group sees the same way, whichever messages it was handed: a
        stateless service that reads a window of a topic (signal: the last ``lookback``
        snapshots up to the one in hand) gets the same window on every instance. Entries that
        do not decode are left out (logged); trimmed topics keep only their last entries.
        """

    @abstractmethod
    def load_state(self, group: str) -> bytes | None:
        """Return the state snapshot last committed by ``group`` (``Consumer.commit``), or
        None when it never committed one."""

    @abstractmethod
    def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        """Return up to ``count`` dead letters, oldest first."""

    @abstractmethod
    def topic_length(self, topic: str) -> int:
        """Return how many messages ``topic`` holds."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op where nothing is held
        """Release connections."""
