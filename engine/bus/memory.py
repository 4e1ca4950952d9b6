"""In-process bus with Redis Streams' group semantics, for backtests and unit tests.

Deterministic: message ids are a global sequence, reads return in publish order, and nothing
happens in the background. Events are stored as the immutable objects they are (no encoding on
the hot path of a backtest); raw bytes published with ``publish_raw`` are decoded on delivery,
exactly as the Redis bus does. A member created again under the name of one that left messages
pending reads those first, in order, as Redis' ``XREADGROUP ... 0`` gives them back. A state
snapshot committed with an acknowledgement is kept per group (bytes, as Redis keeps it), so a
service object created again on the same bus restores from it exactly as a restarted process
does.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec
import structlog

from engine.bus.base import (
    Bus,
    Consumer,
    DeadLetter,
    Delivery,
    Outbox,
    check_topic,
    stream_id_order,
)
from engine.errors import BusError, EventDecodeError
from engine.events import Envelope, decode, encode

log = structlog.get_logger("engine.bus")


class _Delivered(msgspec.Struct, frozen=True, gc=False):
    """Who holds a pending message, since when, after how many deliveries; messages read in
    one batch share one record (a reclaim gives each its own). A Struct: built in C, several
    times cheaper than a dataclass, and one is built per read."""

    consumer: str
    delivered_at: float
    attempts: int


@dataclass(slots=True)
class _Group:
    next_index: int = 0
    pending: dict[str, tuple[_Delivered, int]] = field(
        default_factory=dict
    )  # id -> (record, index)


class MemoryBus(Bus):
    """Topics as lists in memory; thread-safe so a test can run members in threads."""

    def __init__(self, namespace: str = "memory", clock: Callable[[], float] = time.monotonic):
        self.namespace = namespace
        self._clock = clock
        # Hot paths enter the (C-level, re-entrant) lock directly; only blocking reads need the
        # Condition built on it, whose Python-level __enter__ costs several times more.
        self._lock = threading.RLock()
        self._condition = threading.Condition(self._lock)
        self._waiting = 0  # readers blocked in wait(); publishers skip notify when none
        self._sequence = 0
        self._topics: dict[str, list[tuple[str, Envelope | bytes]]] = {}
        self._groups: dict[tuple[str, str], _Group] = {}
        self._processed: dict[str, set[str]] = {}
        self._dead_letters: list[DeadLetter] = []
        self._states: dict[str, bytes] = {}  # group -> last committed state snapshot

    def _log(self, topic: str) -> list[tuple[str, Envelope | bytes]]:
        log = self._topics.get(topic)
        if log is None:
            log = self._topics[check_topic(topic)] = []
        return log

    def _append(self, topic: str, item: Envelope | bytes) -> str:
        self._sequence += 1
        message_id = f"{self._sequence}-0"
        self._log(topic).append((message_id, item))
        return message_id

    def publish(self, topic: str, event: Envelope) -> str:
        with self._lock:
            message_id = self._append(topic, event)
            if self._waiting:
                self._condition.notify_all()
        return message_id

    def publish_many(self, topic: str, events: Sequence[Envelope]) -> list[str]:
        with self._lock:
            log = self._log(topic)
            if len(events) == 1:  # most emits carry one event: skip the comprehension and zip
                self._sequence += 1
                ids = [f"{self._sequence}-0"]
                log.append((ids[0], events[0]))
            else:
                first = self._sequence + 1
                self._sequence += len(events)
                ids = [f"{sequence}-0" for sequence in range(first, self._sequence + 1)]
                log.extend(zip(ids, events))
            if self._waiting:
                self._condition.notify_all()
        return ids

    def publish_raw(self, topic: str, data: bytes) -> str:
        with self._lock:
            message_id = self._append(topic, bytes(data))
            if self._waiting:
                self._condition.notify_all()
        return message_id

    def consumer(self, group: str, name: str, topics: Sequence[str]) -> MemoryConsumer:
        with self._lock:
            for topic in topics:
                self._topics.setdefault(check_topic(topic), [])
                self._groups.setdefault((topic, group), _Group())
            self._processed.setdefault(group, set())
            return MemoryConsumer(self, group, name, tuple(topics))

    def last_event(self, topic: str) -> Envelope | None:
        with self._lock:
            log = self._log(topic)
            if not log:
                return None
            item = log[-1][1]
        return item if isinstance(item, Envelope) else decode(item)

    def consumed_history(self, group: str, topic: str, count: int | None) -> list[Envelope]:
        check_topic(topic)
        with self._lock:
            state = self._groups.get((topic, group))
            if state is None or (count is not None and count <= 0):
                return []
            pending = {index for _, index in state.pending.values()}
            out: list[Envelope] = []
            log = self._topics[topic]
            for index in range(state.next_index - 1, -1, -1):
                if index in pending:
                    continue
                item = log[index][1]
                out.append(item if isinstance(item, Envelope) else decode(item))
                if len(out) == count:
                    break
            return out[::-1]

    def history_until(
        self, topic: str, message_id: str, count: int, after: str | None = None
    ) -> list[tuple[str, Envelope]]:
        check_topic(topic)
        if count <= 0:
            return []
        with self._lock:
            entries = self._topics.get(topic, [])
            # Ids increase along a topic's log: find the bounds by bisection.
            stop = bisect.bisect_right(
                entries, stream_id_order(message_id), key=lambda entry: stream_id_order(entry[0])
            )
            start = 0
            if after is not None:
                start = bisect.bisect_right(
                    entries, stream_id_order(after), key=lambda entry: stream_id_order(entry[0])
                )
            window = entries[max(start, stop - count) : stop]
        out: list[tuple[str, Envelope]] = []
        for entry_id, item in window:
            if isinstance(item, Envelope):
                out.append((entry_id, item))
                continue
            try:
                out.append((entry_id, decode(item)))
            except EventDecodeError:
                log.warning("bus.history_skipped", topic=topic, message_id=entry_id)
        return out

    def load_state(self, group: str) -> bytes | None:
        with self._lock:
            return self._states.get(group)

    def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        with self._lock:
            return list(self._dead_letters[:count])

    def topic_length(self, topic: str) -> int:
        with self._lock:
            return len(self._topics.get(topic, ()))


def _delivery(topic: str, message_id: str, item: Envelope | bytes, attempts: int) -> Delivery:
    if isinstance(item, Envelope):
        return Delivery(topic, message_id, attempts, item)
    try:
        return Delivery(topic, message_id, attempts, decode(item), data=item)
    except EventDecodeError as error:
        return Delivery(topic, message_id, attempts, None, error=error, data=item)


class MemoryConsumer(Consumer):
    """A group member of a ``MemoryBus``.

    Topic logs, group states and the group's processed set are created once (by
    ``MemoryBus.consumer``) and never replaced, so the member keeps direct references to them
    instead of looking them up by ``(topic, group)`` on every read and acknowledgement.

    Its first reads return the entries pending under its name (a previous member of that name
    died holding them), in order per topic, each counted as one more delivery; only when none
    is left does it read new messages (the read that hands out the last of them fills the rest
    of its ``count`` with new ones).
    """

    def __init__(self, bus: MemoryBus, group: str, name: str, topics: tuple[str, ...]):
        self._bus = bus
        self._lock = bus._lock
        self.group = group
        self.name = name
        self.topics = topics
        self._sources = tuple((t, bus._topics[t], bus._groups[(t, group)]) for t in topics)
        self._pending = {topic: state.pending for topic, _, state in self._sources}
        self._processed = bus._processed[group]
        # Per topic still being replayed: index of the last own pending entry handed out.
        self._history: dict[str, int] | None = {topic: -1 for topic in topics}
        self._guarded = False  # guard_duplicates

    def _take_own(self, count: int) -> list[Delivery]:
        """Hand out up to ``count`` per topic of this member's pending entries after the
        cursor, in order (what Redis returns for ``XREADGROUP ... STREAMS key <cursor>``)."""
        history = self._history
        assert history is not None
        now = self._bus._clock()
        out: list[Delivery] = []
        for topic, log, group in self._sources:
            cursor = history.get(topic)
            if cursor is None:
                continue
            own = sorted(
                (index, message_id, record)
                for message_id, (record, index) in group.pending.items()
                if record.consumer == self.name and index > cursor
            )[:count]
            if len(own) < count:
                del history[topic]  # all handed out: this topic reads new messages from now on
            else:
                history[topic] = own[-1][0]
            for index, message_id, record in own:
                attempts = record.attempts + 1
                group.pending[message_id] = (_Delivered(self.name, now, attempts), index)
                out.append(_delivery(topic, message_id, log[index][1], attempts))
        if not history:
            self._history = None
        return out

    def _take_new(self, count: int) -> list[Delivery]:
        out: list[Delivery] = []
        record: _Delivered | None = None
        room = count
        for topic, log, group in self._sources:
            start = group.next_index
            stop = len(log)
            if stop - start > room:
                stop = start + room
            if stop <= start:
                continue
            room -= stop - start
            group.next_index = stop
            if record is None:
                record = _Delivered(self.name, self._bus._clock(), 1)
            pending = group.pending
            for index in range(start, stop):
                message_id, item = log[index]
                pending[message_id] = (record, index)
                if item.__class__ is Envelope:
                    out.append(Delivery(topic, message_id, 1, item))
                else:
                    out.append(_delivery(topic, message_id, item, 1))
        return out

    def read(self, count: int, block_ms: int = 0) -> list[Delivery]:
        if self._history is not None:
            with self._lock:
                own = self._take_own(count)
                if own and self._history is None and len(own) < count:
                    own += self._take_new(count - len(own))  # the rest: new, without waiting
            if own:
                return own
        if not block_ms:
            # Lock-free answer for the common idle poll of an in-process run.
            for _, log, group in self._sources:
                if len(log) > group.next_index:
                    break
            else:
                return []
            with self._lock:
                return self._take_new(count)
        deadline = time.monotonic() + block_ms / 1000
        with self._bus._condition:
            while True:
                out = self._take_new(count)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                self._bus._waiting += 1
                try:
                    self._bus._condition.wait(remaining)
                finally:
                    self._bus._waiting -= 1

    def reclaim(self, min_idle_ms: int, count: int) -> list[Delivery]:
        bus = self._bus
        with self._lock:
            now = bus._clock()
            out: list[Delivery] = []
            for topic, log, group in self._sources:
                for message_id, (record, index) in list(group.pending.items()):
                    if len(out) >= count:
                        return out
                    if (now - record.delivered_at) * 1000 < min_idle_ms:
                        continue
                    attempts = record.attempts + 1
                    group.pending[message_id] = (_Delivered(self.name, now, attempts), index)
                    out.append(_delivery(topic, message_id, log[index][1], attempts))
            return out

    def already_processed(self, event_ids: Sequence[str]) -> list[bool]:
        # No lock: each membership test is atomic, and a check racing a commit of another
        # member is as (un)ordered with the lock as without it.
        return list(map(self._processed.__contains__, event_ids))

    def _mark(self, deliveries: Sequence[Delivery]) -> None:
        add = self._processed.add
        for delivery in deliveries:
            if delivery.event is not None:
                add(delivery.event.id)

    def _ack(self, deliveries: Sequence[Delivery]) -> None:
        by_topic = self._pending
        for delivery in deliveries:
            pending = by_topic.get(delivery.topic)
            if pending is None:
                pending = self._group_pending(delivery.topic)
            pending.pop(delivery.message_id, None)

    def _group_pending(self, topic: str) -> dict[str, tuple[_Delivered, int]]:
        # A topic of the group that this member does not read (another member's delivery).
        return self._bus._groups[(topic, self.group)].pending

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            self._ack(deliveries)

    def guard_duplicates(self) -> None:
        self._guarded = True

    def _applied_elsewhere(self, deliveries: Sequence[Delivery]) -> bool:
        # Under the bus lock: whether another member committed these events first.
        processed = self._processed
        applied = [
            d.event.id for d in deliveries if d.event is not None and d.event.id in processed
        ]
        if not applied:
            return False
        if len(applied) < len(deliveries):
            raise BusError(
                f"group {self.group}: {len(applied)} of the {len(deliveries)} deliveries of "
                "one guarded commit were applied by another member; commit each message on "
                "its own (commit_each_message) when guarding against duplicates"
            )
        log.warning(
            "bus.commit_superseded",
            group=self.group,
            consumer=self.name,
            event_ids=applied[:10],
        )
        return True

    def commit(
        self, deliveries: Sequence[Delivery], state: bytes | None = None, publish: Outbox = ()
    ) -> None:
        with self._lock:
            if self._guarded and self._applied_elsewhere(deliveries):
                self._ack(deliveries)
                return
            for topic, events in publish:
                if events:
                    self._bus.publish_many(topic, events)
            self._mark(deliveries)
            self._ack(deliveries)
            if state is not None:
                self._bus._states[self.group] = bytes(state)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        data = delivery.data if delivery.data is not None else encode(delivery.event)  # type: ignore[arg-type]
        with self._lock:
            self._bus._dead_letters.append(
                DeadLetter(
                    delivery.topic,
                    self.group,
                    self.name,
                    delivery.message_id,
                    delivery.attempts,
                    reason,
                    data,
                )
            )
            self._ack([delivery])

    def pending_count(self) -> int:
        with self._lock:
            return sum(len(pending) for pending in self._pending.values())
