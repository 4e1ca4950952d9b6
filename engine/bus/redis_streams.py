"""Redis Streams bus: at-least-once delivery through consumer groups, effects once through
event-id idempotency, poison messages to a dead-letter stream, and reconnection with capped
exponential backoff when Redis goes away.

Round trips are what cost, so the hot paths batch: ``publish_many`` is one pipeline, a consumer
reads up to ``batch_size`` messages per XREADGROUP, checks them for duplicates with one ZMSCORE,
and marks and acknowledges the whole batch in one MULTI (or each message in its own, for
services whose handlers have effects outside the process). A stateful service's snapshot is
a ``SET {namespace}:state:{group}`` inside that same MULTI, so its state and its
acknowledgements never disagree, whatever moment the process dies at.

A consumer's name is stable across restarts, so a restarted member first reads its own pending
entries (``XREADGROUP ... STREAMS key 0``) and only then anything new (``>``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import structlog
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from engine.bus import keys
from engine.bus.base import Bus, Consumer, DeadLetter, Delivery, Outbox, check_topic
from engine.bus.connect import redis_client
from engine.errors import BusError, BusUnavailableError, EventDecodeError
from engine.events import Envelope, decode, encode
from engine.events.topics import LEDGER_TOPICS

T = TypeVar("T")
log = structlog.get_logger("engine.bus")
_EVENT_FIELD = b"event"
_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_WATCH_RETRIES = 5
# A guarded commit WATCHes the group's processed set, which every commit of every member
# changes: an abort means another member made progress, so it is retried longer.
_GUARD_RETRIES = 100


class LeaseLostError(BusError):
    """This instance no longer holds its service's lock (``guard_lease``): another instance
    is active, and nothing of this write was written."""


class AlreadyAppliedError(BusError):
    """A guarded commit (``RedisConsumer.guard_duplicates``) found some of its events already
    applied by another member of the group; nothing of it was written. ``applied`` says,
    per event id of the commit, whether it was."""

    def __init__(self, message: str, applied: list[bool]) -> None:
        super().__init__(message)
        self.applied = applied


class RedisDataLostError(BusError):
    """The Redis a run works on lost its data (restarted empty, flushed): the account's marker
    key is gone. Nothing more may be published or committed there."""


def _exchange(connection: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    # One write of ``commands`` on ``connection``, then every reply read (see ``roundtrip``).
    connection.send_packed_command(connection.pack_commands(commands))
    replies: list[Any] = []
    first_error: redis.ResponseError | None = None
    for _ in commands:
        try:
            replies.append(connection.read_response())
        except redis.ResponseError as error:
            replies.append(error)
            first_error = first_error or error
    if first_error is not None:
        raise first_error
    return replies


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for logs and error messages
    (a Sentinel URL's list of hosts included)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable redis url>"
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


class RedisBus(Bus):
    """A bus over one Redis connection pool, keys under ``namespace``.

    Parameters
    ----------
    url
        ``redis://``, ``rediss://`` (TLS), ``unix://`` or ``redis+sentinel://`` URL
        (``engine.bus.connect``), password allowed in it.
    stream_maxlen
        Approximate cap per topic stream (MAXLEN ~); the order/fill ledger is never trimmed.
    processed_retention_s
        How long applied event ids are remembered for duplicate detection.
    reconnect_max_delay_s
        Cap of the backoff between reconnection attempts.
    give_up_after_s
        Raise ``BusUnavailableError`` when Redis stays away this long; None waits forever,
        which is what a daemon wants. A public attribute: a run bounds its first connection
        with it, then clears it.
    stop
        When set, a wait for Redis is cut short with ``BusUnavailableError``, so shutdown is
        never stuck behind a dead server.
    """

    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        stream_maxlen: int = 100_000,
        processed_retention_s: int = 7 * 24 * 3600,
        reconnect_max_delay_s: float = 10.0,
        give_up_after_s: float | None = None,
        socket_timeout_s: float = 30.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.namespace = namespace
        self.url = url
        self._stream_maxlen = stream_maxlen
        self._processed_retention_ms = processed_retention_s * 1000
        self._backoff = ExponentialWithJitterBackoff(cap=reconnect_max_delay_s, base=0.05)
        self.give_up_after_s = give_up_after_s
        self._stop = stop or threading.Event()
        # Data-loss guard (``guard_data``): the marker key, and set once it was found gone.
        self._marker_key: str | None = None
        self.data_lost = threading.Event()
        self._lost_message = ""
        # Fencing (``guard_lease``): the service lock's key and the token this instance holds.
        self._lease: tuple[str, bytes] | None = None
        # Set by ``fail`` (and ``cut_if_unresponsive``): every call raises at once from then on.
        self._broken = threading.Event()
        self._broken_message = ""
        # We own retrying (with logs and a stop signal), so redis-py must not retry silently.
        self.redis = redis_client(
            url,
            socket_connect_timeout=2.0,
            socket_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )

    # -- resilience ------------------------------------------------------------------------
    def call(self, operation: str, function: Callable[[], T]) -> T:
        """Run ``function``, retrying with backoff while Redis is unreachable."""
        attempt = 0
        started = time.monotonic()
        while True:
            if self.data_lost.is_set():
                raise RedisDataLostError(self._lost_message)
            if self._broken.is_set():
                raise BusUnavailableError(f"{self._broken_message} (during {operation})")
            try:
                result = function()
            except _UNAVAILABLE as error:
                attempt += 1
                waited = time.monotonic() - started
                give_up = self.give_up_after_s
                if self._stop.is_set() or (give_up is not None and waited >= give_up):
                    why = "stopped while waiting" if self._stop.is_set() else "gave up"
                    raise BusUnavailableError(
                        f"redis at {redact_url(self.url)} unavailable for {waited:.1f}s during "
                        f"{operation} ({attempt} attempts, {why}): {error}"
                    ) from error
                delay = self._backoff.compute(attempt)
                if give_up is not None:
                    delay = min(delay, max(0.0, give_up - waited))
                log.warning(
                    "bus.redis_unavailable",
                    operation=operation,
                    attempt=attempt,
                    retry_in_s=round(delay, 3),
                    error=str(error),
                )
                self._pause(delay)
                continue
            except Exception as error:
                if not self._broken.is_set():
                    raise
                # A connection cut under a call in flight may fail in any way: it is the cut.
                raise BusUnavailableError(
                    f"{self._broken_message} (during {operation}: {type(error).__name__})"
                ) from error
            if attempt:
                log.info(
                    "bus.redis_reconnected",
                    operation=operation,
                    attempts=attempt,
                    downtime_s=round(time.monotonic() - started, 3),
                )
                # A server that came back may have come back empty.
                self.check_data()
            return result

    def _pause(self, delay: float) -> None:
        # Sleep between attempts; a stop or a ``fail`` ends the sleep.
        deadline = time.monotonic() + delay
        while not self._broken.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stop.wait(min(remaining, 0.2)):
                return

    def fail(self, message: str) -> None:
        """Give up on this Redis for good: close every connection (waking calls blocked on
        it) and make every call, and every retry in progress, raise ``BusUnavailableError``
        with ``message``. For a server known to be gone (the embedded one died) or hung."""
        if self._broken.is_set():
            return
        self._broken_message = message
        self._broken.set()
        self.redis.connection_pool.disconnect()

    def cut_if_unresponsive(self, probe_timeout_s: float = 1.0) -> bool:
        """When stopping: if Redis does not answer a PING within ``probe_timeout_s``, close
        every connection of the pool (waking calls blocked on a hung server) and make every
        later call fail at once; return whether it did.

        A stop must not wait out a socket timeout per call on a server that hangs.
        """
        probe = redis_client(
            self.url,
            socket_connect_timeout=probe_timeout_s,
            socket_timeout=probe_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            if probe.ping():
                return False
        except (redis.RedisError, OSError):
            pass
        finally:
            probe.close()
        log.warning(
            "bus.redis_connections_cut",
            url=redact_url(self.url),
            reason=f"stopping, and redis did not answer within {probe_timeout_s}s",
        )
        self.fail(
            f"redis at {redact_url(self.url)} does not answer: stopped without waiting for it"
        )
        return True

    # -- data-loss guard -------------------------------------------------------------------
    def guard_data(self, marker_key: str) -> None:
        """From now on, treat the disappearance of ``marker_key`` as lost data: every write
        (publish, commit, ack, dead letter) is a transaction that runs only while it exists,
        it is checked after each reconnection and before a missing consumer group is
        recreated, and ``check_data`` checks it on demand. Once found gone, every call raises
        ``RedisDataLostError``."""
        self._marker_key = marker_key

    @property
    def marker_key(self) -> str | None:
        """The key ``guard_data`` guards this bus with (None: unguarded)."""
        return self._marker_key

    def guard_lease(self, lock_key: str, token: str) -> None:
        """From now on, commit a write only while ``lock_key`` holds ``token``: the fencing of
        a stateful service's one active instance (``engine.bus.leadership``). A write after
        another instance took the lock raises ``LeaseLostError`` and writes nothing."""
        self._lease = (lock_key, token.encode())

    def check_data(self) -> None:
        """Raise ``RedisDataLostError`` if the guarded marker key is gone (see ``guard_data``).

        Asks Redis once, without retrying: an unreachable server is the caller's retry loop's
        business, and the next check (after the reconnection) asks again.
        """
        if self.data_lost.is_set():
            raise RedisDataLostError(self._lost_message)
        key = self._marker_key
        if key is None:
            return
        try:
            present = self.redis.exists(key)
        except _UNAVAILABLE:
            return
        if present:
            return
        self._lost_message = (
            f"the Redis data at {redact_url(self.url)} was lost: the key {key} of this account "
            "is gone (a Redis restarted without persistence, or flushed); stopped without "
            "publishing anything more"
        )
        if not self.data_lost.is_set():
            self.data_lost.set()
            log.error("bus.redis_data_lost", url=redact_url(self.url), marker=key)
        raise RedisDataLostError(self._lost_message)

    def ping(self) -> bool:
        """Return True when Redis answers (raises BusUnavailableError per ``call``'s rules)."""
        return bool(self.call("ping", self.redis.ping))

    def roundtrip(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write and return their raw replies, in order.

        The hot paths (batch publish, read, commit) use this instead of a redis-py pipeline:
        the same single round trip, without per-command Python layers and reply callbacks,
        which cost as much as the codec at these rates. An error reply raises the first
        ``redis.ResponseError`` after every reply has been read, so the connection stays usable.
        """
        pool = self.redis.connection_pool
        connection = pool.get_connection()
        try:
            return _exchange(connection, commands)
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)

    def transaction(
        self,
        operation: str,
        commands: Sequence[tuple[Any, ...]],
        unless_applied: tuple[str, Sequence[str]] | None = None,
    ) -> list[Any]:
        """Run ``commands`` in one MULTI/EXEC (retried per ``call``) and return EXEC's replies.

        On a guarded bus (``guard_data``) the transaction runs only while the account's marker
        key exists: it WATCHes the marker and checks it first, so a FLUSHALL or an empty
        restart before or during the transaction makes it write nothing and raise
        ``RedisDataLostError`` (a commit in flight never leaves a stray key behind).

        ``unless_applied`` (a group's processed set and event ids) makes the transaction run
        only while none of those ids is in the set, WATCHed the same way: a guarded commit
        (``RedisConsumer.guard_duplicates``).

        Raises
        ------
        RedisDataLostError
            The guarded marker key is gone.
        AlreadyAppliedError
            ``unless_applied``: some of the ids are in the set; nothing was written.
        BusError
            The transaction was aborted for another reason.
        """
        if not commands:
            return []
        marker, lease = self._marker_key, self._lease
        batch = [("MULTI",), *commands, ("EXEC",)]
        processed = unless_applied[0] if unless_applied is not None else None
        watched = [key for key in (marker, lease and lease[0], processed) if key is not None]
        checks: list[tuple[Any, ...]] = [("WATCH", *watched)] if watched else []
        if marker is not None:
            checks.append(("EXISTS", marker))
        if lease is not None:
            checks.append(("GET", lease[0]))
        if unless_applied is not None:
            checks.append(("ZMSCORE", unless_applied[0], *unless_applied[1]))
        retries = _WATCH_RETRIES if unless_applied is None else _GUARD_RETRIES
        holder: list[bytes | None] = []
        applied: list[bool] = []

        def run() -> list[Any] | None:
            pool = self.redis.connection_pool
            connection = pool.get_connection()
            try:
                # The lease's renewal (PEXPIRE) touches its key, which aborts a transaction
                # WATCHing it: then check again and retry. A takeover fails the check.
                for _ in range(retries):
                    if checks:
                        replies = iter(_exchange(connection, checks)[1:])
                        present = next(replies) if marker is not None else 1
                        owner = next(replies) if lease is not None else None
                        scores = next(replies) if unless_applied is not None else []
                        if not present or (lease is not None and owner != lease[1]):
                            _exchange(connection, [("UNWATCH",)])
                            holder[:] = [owner]
                            return None
                        if any(score is not None for score in scores):
                            _exchange(connection, [("UNWATCH",)])
                            applied[:] = [score is not None for score in scores]
                            return None
                    result = _exchange(connection, batch)[-1]
                    if result is not None or (lease is None and unless_applied is None):
                        return result
                return None
            except BaseException:
                connection.disconnect()  # never hand back a connection that still WATCHes
                raise
            finally:
                pool.release(connection)

        replies = self.call(operation, run)
        if replies is None:
            if marker is not None:
                self.check_data()
            if applied:
                raise AlreadyAppliedError(
                    f"redis {operation}: {sum(applied)} of {len(applied)} events were already "
                    f"applied by another member ({processed}); nothing was written",
                    applied,
                )
            if lease is not None and holder and holder[0] != lease[1]:
                now = "nobody" if holder[0] is None else holder[0].decode(errors="replace")
                log.error("bus.lease_lost", operation=operation, key=lease[0], holder=now)
                raise LeaseLostError(
                    f"redis {operation}: this instance no longer holds {lease[0]} (held by "
                    f"{now.split(' #')[0]}): another instance is active; nothing was written"
                )
            raise BusError(f"redis {operation}: transaction was aborted")
        return replies

    # -- publishing ------------------------------------------------------------------------
    def _xadd_args(self, topic: str) -> dict[str, Any]:
        if topic in LEDGER_TOPICS:
            return {}
        return {"maxlen": self._stream_maxlen, "approximate": True}

    def publish(self, topic: str, event: Envelope) -> str:
        return self.publish_raw(topic, encode(event))

    def publish_raw(self, topic: str, data: bytes) -> str:
        key = keys.stream(self.namespace, check_topic(topic))
        if self._marker_key is not None or self._lease is not None:  # guarded (see transaction)
            command: tuple[Any, ...] = ("XADD", key, "*", _EVENT_FIELD, data)
            trim = [] if topic in LEDGER_TOPICS else [self._trim_command(key)]
            return _text(self.transaction("xadd", [command, *trim])[0])
        args = self._xadd_args(topic)
        message_id = self.call("xadd", lambda: self.redis.xadd(key, {_EVENT_FIELD: data}, **args))
        return _text(message_id)

    def publish_commands(self, topic: str, events: Sequence[Envelope]) -> list[tuple[Any, ...]]:
        """The commands that append ``events`` to ``topic`` (and trim it, unless a ledger)."""
        key = keys.stream(self.namespace, check_topic(topic))
        commands: list[tuple[Any, ...]] = [
            ("XADD", key, "*", _EVENT_FIELD, encode(e)) for e in events
        ]
        if topic not in LEDGER_TOPICS:
            # One approximate trim per batch rather than one per entry.
            commands.append(self._trim_command(key))
        return commands

    def _trim_command(self, key: str) -> tuple[Any, ...]:
        return ("XTRIM", key, "MAXLEN", "~", self._stream_maxlen)

    def publish_many(self, topic: str, events: Sequence[Envelope]) -> list[str]:
        if not events:
            return []
        commands = self.publish_commands(topic, events)
        if self._marker_key is not None or self._lease is not None:  # guarded (see transaction)
            replies = self.transaction("xadd_batch", commands)
        else:
            replies = self.call("xadd_batch", lambda: self.roundtrip(commands))
        return [_text(message_id) for message_id in replies[: len(events)]]

    # -- consuming -------------------------------------------------------------------------
    def consumer(self, group: str, name: str, topics: Sequence[str]) -> RedisConsumer:
        consumer = RedisConsumer(self, group, name, tuple(check_topic(t) for t in topics))
        consumer.ensure_groups()
        return consumer

    def last_event(self, topic: str) -> Envelope | None:
        key = keys.stream(self.namespace, check_topic(topic))
        entries = self.call("xrevrange", lambda: self.redis.xrevrange(key, count=1))
        return decode(entries[0][1][_EVENT_FIELD]) if entries else None

    def consumed_history(self, group: str, topic: str, count: int | None) -> list[Envelope]:
        key = keys.stream(self.namespace, check_topic(topic))

        def read() -> list[tuple[bytes, dict]]:
            try:
                groups = self.redis.xinfo_groups(key)
            except redis.ResponseError:
                return []  # no such stream yet
            state = next((g for g in groups if _text(g["name"]) == group), None)
            if state is None or (count is not None and count <= 0):
                return []
            pending: set[str] = set()
            if state["pending"]:
                rows = self.redis.xpending_range(
                    key, group, min="-", max="+", count=int(state["pending"])
                )
                pending = {_text(row["message_id"]) for row in rows}
            entries = self.redis.xrevrange(
                key,
                max=_text(state["last-delivered-id"]),
                min="-",
                count=None if count is None else count + len(pending),
            )
            kept = [e for e in entries if _text(e[0]) not in pending]
            return kept if count is None else kept[:count]

        entries = self.call("consumed_history", read)
        out = []
        for message_id, fields in reversed(entries):
            try:
                out.append(decode(fields[_EVENT_FIELD]))
            except (EventDecodeError, KeyError):
                log.warning("bus.history_skipped", topic=topic, message_id=_text(message_id))
        return out

    def history_until(
        self, topic: str, message_id: str, count: int, after: str | None = None
    ) -> list[tuple[str, Envelope]]:
        key = keys.stream(self.namespace, check_topic(topic))
        if count <= 0:
            return []
        low = "-" if after is None else f"({after}"  # exclusive bounds: Redis >= 6.2
        entries = self.call(
            "xrevrange",
            lambda: self.redis.xrevrange(key, max=message_id, min=low, count=count),
        )
        out: list[tuple[str, Envelope]] = []
        for entry_id, fields in reversed(entries):
            try:
                out.append((_text(entry_id), decode(fields[_EVENT_FIELD])))
            except (EventDecodeError, KeyError):
                log.warning("bus.history_skipped", topic=topic, message_id=_text(entry_id))
        return out

    def load_state(self, group: str) -> bytes | None:
        key = keys.state(self.namespace, group)
        return self.call("get_state", lambda: self.redis.get(key))

    def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        key = keys.dead_letter(self.namespace)
        entries = self.call("xrange", lambda: self.redis.xrange(key, count=count))
        out = []
        for _, fields in entries:
            out.append(
                DeadLetter(
                    topic=_text(fields[b"topic"]),
                    group=_text(fields[b"group"]),
                    consumer=_text(fields[b"consumer"]),
                    message_id=_text(fields[b"message_id"]),
                    attempts=int(fields[b"attempts"]),
                    reason=_text(fields[b"reason"]),
                    data=fields[b"event"],
                )
            )
        return out

    def topic_length(self, topic: str) -> int:
        key = keys.stream(self.namespace, topic)
        return int(self.call("xlen", lambda: self.redis.xlen(key)))

    def close(self) -> None:
        self.redis.close()


class RedisConsumer(Consumer):
    """One member of a consumer group on a ``RedisBus``.

    Its first reads return the entries pending under its name in the group (a previous process
    of that name died holding them), in order per stream; only when none is left does it read
    new messages (the read that hands out the last of them fills the rest of its ``count``
    with new ones). Redis counts each of those reads as one more delivery.
    """

    def __init__(self, bus: RedisBus, group: str, name: str, topics: tuple[str, ...]):
        self._bus = bus
        self._redis = bus.redis
        self.group = group
        self.name = name
        self.topics = topics
        self._stream_keys = {keys.stream(bus.namespace, t): t for t in topics}
        self._topic_of_key = {key.encode(): topic for key, topic in self._stream_keys.items()}
        self._processed_key = keys.processed(bus.namespace, group)
        self._state_key = keys.state(bus.namespace, group)
        # Per stream still being replayed: id of the last own pending entry handed out.
        self._history: dict[str, str] | None = dict.fromkeys(self._stream_keys, "0")
        self._guarded = False  # guard_duplicates

    def ensure_groups(self) -> None:
        """Create this group on every topic (from the start of the stream) if missing."""

        def create() -> None:
            for key in self._stream_keys:
                try:
                    self._redis.xgroup_create(key, self.group, id="0", mkstream=True)
                except redis.ResponseError as error:
                    if "BUSYGROUP" not in str(error):
                        raise

        self._bus.call("xgroup_create", create)

    def _call_grouped(self, operation: str, function: Callable[[], T]) -> T:
        # A Redis that came back empty (no persistence) has lost our groups: recreate, retry.
        # A read blocked at that moment says UNBLOCKED (Redis 7: the stream was deleted).
        try:
            return self._bus.call(operation, function)
        except redis.ResponseError as error:
            # A group or stream gone with the account's data (NOGROUP, UNBLOCKED, or XINFO's
            # "no such key"): say the data was lost, never recreate anything.
            self._bus.check_data()
            if not str(error).startswith(("NOGROUP", "UNBLOCKED")):
                raise BusError(f"redis {operation} failed: {error}") from error
            log.warning("bus.group_recreated", group=self.group, topics=list(self.topics))
            self.ensure_groups()
            return self._bus.call(operation, function)

    def _delivery(self, key: bytes, message_id: bytes, fields: Any, attempts: int) -> Delivery:
        topic = self._topic_of_key[key]
        if fields is None:  # a pending entry trimmed away: its history read says nil
            error = EventDecodeError("<message>", "stream entry was trimmed before its ack")
            return Delivery(topic, message_id.decode(), attempts, None, error=error, data=b"")
        if isinstance(fields, dict):  # parsed by redis-py (reclaim path)
            data = fields.get(_EVENT_FIELD)
        elif len(fields) == 2 and fields[0] == _EVENT_FIELD:  # raw [field, value]: the norm
            data = fields[1]
        else:
            data = dict(zip(fields[::2], fields[1::2])).get(_EVENT_FIELD)
        if data is None:
            error = EventDecodeError("<message>", f"stream entry has no {_EVENT_FIELD!r} field")
            return Delivery(topic, message_id.decode(), attempts, None, error=error, data=b"")
        try:
            return Delivery(topic, message_id.decode(), attempts, decode(data), data=data)
        except EventDecodeError as error:
            return Delivery(topic, message_id.decode(), attempts, None, error=error, data=data)

    def read(self, count: int, block_ms: int = 0) -> list[Delivery]:
        own: list[Delivery] = []
        if self._history is not None:
            own = self._read_own(count)
            if own and (self._history is not None or len(own) >= count):
                return own
            # The last of them: fill the rest with new messages, without waiting.
            count -= len(own)
            block_ms = 0 if own else block_ms
        command: tuple[Any, ...] = (
            "XREADGROUP",
            "GROUP",
            self.group,
            self.name,
            "COUNT",
            count,
            *(("BLOCK", block_ms) if block_ms else ()),
            "STREAMS",
            *self._stream_keys,
            *([">"] * len(self._stream_keys)),
        )
        (response,) = self._call_grouped("xreadgroup", lambda: self._bus.roundtrip([command]))
        # Raw reply: {key: [[id, [field, value, ...]], ...]} under RESP3, a list of
        # [key, entries] pairs under RESP2, None when nothing arrived.
        streams = response.items() if isinstance(response, dict) else response or ()
        new = [
            self._delivery(key, message_id, fields, 1)
            for key, entries in streams
            for message_id, fields in entries
        ]
        return own + new if own else new

    def _read_own(self, count: int) -> list[Delivery]:
        """Return up to ``count`` per stream of this member's pending entries after the cursor,
        in order, with their delivery counts (which this read raised by one)."""
        history = self._history
        assert history is not None
        command: tuple[Any, ...] = (
            "XREADGROUP",
            "GROUP",
            self.group,
            self.name,
            "COUNT",
            count,
            "STREAMS",
            *history,
            *history.values(),
        )
        (response,) = self._call_grouped("xreadgroup", lambda: self._bus.roundtrip([command]))
        streams = response.items() if isinstance(response, dict) else response or ()
        out: list[Delivery] = []
        replayed: set[str] = set()
        for raw_key, entries in streams:
            key = _text(raw_key)
            replayed.add(key)
            if len(entries) < count:
                history.pop(key, None)  # all handed out: this stream reads new messages now
            else:
                history[key] = _text(entries[-1][0])
            if not entries:
                continue
            attempts = self._attempts(key, entries)
            trimmed = [_text(message_id) for message_id, fields in entries if fields is None]
            if trimmed:
                log.error(
                    "bus.pending_trimmed",
                    topic=self._stream_keys[key],
                    group=self.group,
                    message_ids=trimmed,
                    hint="raise [bus] stream_maxlen: messages were trimmed before ack",
                )
            out.extend(
                self._delivery(raw_key, message_id, fields, attempts.get(_text(message_id), 1))
                for message_id, fields in entries
            )
        for key in set(history) - replayed:  # no reply for a stream: nothing pending there
            del history[key]
        if not history:
            self._history = None
        return out

    def reclaim(self, min_idle_ms: int, count: int) -> list[Delivery]:
        out: list[Delivery] = []
        for key in self._stream_keys:
            claimed: list[tuple[bytes, dict]] = []
            start = "0-0"
            while len(claimed) < count:
                result = self._call_grouped(
                    "xautoclaim",
                    # Called at once, inside this iteration: the loop variables are current.
                    lambda: self._redis.xautoclaim(
                        key,  # noqa: B023
                        self.group,
                        self.name,
                        min_idle_time=min_idle_ms,
                        start_id=start,  # noqa: B023
                        count=count - len(claimed),  # noqa: B023
                    ),
                )
                # Redis 7 adds a third element: ids trimmed away while pending (6.2 has none).
                next_start, entries = result[0], result[1]
                deleted = result[2] if len(result) > 2 else []
                claimed.extend(entries)
                if deleted:
                    log.error(
                        "bus.pending_trimmed",
                        topic=self._stream_keys[key],
                        group=self.group,
                        message_ids=[_text(i) for i in deleted],
                        hint="raise [bus] stream_maxlen: messages were trimmed before ack",
                    )
                start = _text(next_start)
                if start == "0-0":
                    break
            if not claimed:
                continue
            attempts = self._attempts(key, claimed)
            out.extend(
                self._delivery(key.encode(), message_id, fields, attempts.get(_text(message_id), 1))
                for message_id, fields in claimed
            )
        return out

    def _attempts(self, key: str, claimed: Sequence[Sequence[Any]]) -> dict[str, int]:
        first, last = _text(claimed[0][0]), _text(claimed[-1][0])
        rows = self._bus.call(
            "xpending",
            lambda: self._redis.xpending_range(
                key,
                self.group,
                min=first,
                max=last,
                count=len(claimed) * 2 + 10,
                consumername=self.name,
            ),
        )
        return {_text(row["message_id"]): int(row["times_delivered"]) for row in rows}

    def already_processed(self, event_ids: Sequence[str]) -> list[bool]:
        if not event_ids:
            return []
        scores = self._bus.call(
            "zmscore", lambda: self._redis.zmscore(self._processed_key, list(event_ids))
        )
        return [score is not None for score in scores]

    def _mark_commands(self, deliveries: Sequence[Delivery]) -> list[tuple[Any, ...]]:
        now_ms = int(time.time() * 1000)
        members: list[Any] = []
        for delivery in deliveries:
            if delivery.event is not None:
                members += (now_ms, delivery.event.id)
        if not members:
            return []
        expired = now_ms - self._bus._processed_retention_ms
        return [
            ("ZADD", self._processed_key, *members),
            ("ZREMRANGEBYSCORE", self._processed_key, "-inf", expired),
        ]

    def _ack_commands(self, deliveries: Sequence[Delivery]) -> list[tuple[Any, ...]]:
        by_topic: dict[str, list[str]] = {}
        for delivery in deliveries:
            by_topic.setdefault(delivery.topic, []).append(delivery.message_id)
        return [
            ("XACK", keys.stream(self._bus.namespace, topic), self.group, *ids)
            for topic, ids in by_topic.items()
        ]

    def _transaction(self, operation: str, commands: list[tuple[Any, ...]]) -> None:
        self._bus.transaction(operation, commands)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._transaction("xack", self._ack_commands(deliveries))

    def guard_duplicates(self) -> None:
        self._guarded = True

    def commit(
        self, deliveries: Sequence[Delivery], state: bytes | None = None, publish: Outbox = ()
    ) -> None:
        commands = [
            command
            for topic, events in publish
            if events
            for command in self._bus.publish_commands(topic, events)
        ]
        commands += self._mark_commands(deliveries) + self._ack_commands(deliveries)
        if state is not None:
            commands.append(("SET", self._state_key, state))
        event_ids = [d.event.id for d in deliveries if d.event is not None]
        if not (self._guarded and event_ids):
            self._transaction("commit", commands)
            return
        try:
            self._bus.transaction("commit", commands, (self._processed_key, event_ids))
        except AlreadyAppliedError as error:
            if not all(error.applied) or len(event_ids) < len(deliveries):
                raise BusError(
                    f"group {self.group}: {sum(error.applied)} of the {len(deliveries)} "
                    "deliveries of one guarded commit were applied by another member; commit "
                    "each message on its own (commit_each_message) when guarding against "
                    "duplicates"
                ) from None
            log.warning(
                "bus.commit_superseded",
                group=self.group,
                consumer=self.name,
                event_ids=event_ids[:10],
            )
            self.ack(deliveries)  # theirs now: only leave our pending list

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        data = delivery.data if delivery.data is not None else encode(delivery.event)  # type: ignore[arg-type]
        entry = {
            "topic": delivery.topic,
            "group": self.group,
            "consumer": self.name,
            "message_id": delivery.message_id,
            "attempts": str(delivery.attempts),
            "reason": reason,
            "dead_at_ms": str(int(time.time() * 1000)),
            "event": data,
        }
        fields = [item for pair in entry.items() for item in pair]
        self._transaction(
            "dead_letter",
            [
                ("XADD", keys.dead_letter(self._bus.namespace), "*", *fields),
                *self._ack_commands([delivery]),
            ],
        )

    def adopt_pending(self) -> int:
        """Take over every entry of this group still pending under another consumer's name
        (an instance that died, or lost the service's lock, holding them), so this one reads
        them first, in stream order, before anything new; return how many. Only for the one
        active instance of a stateful service: it holds the lock, so their owners are gone."""

        def adopt() -> int:
            adopted = 0
            for key in self._stream_keys:
                cursor = "0-0"
                while True:
                    command = ("XAUTOCLAIM", key, self.group, self.name, 0, cursor)
                    # Raw reply (redis-py's parser expects another form with JUSTID).
                    (reply,) = self._bus.roundtrip([(*command, "COUNT", 1000, "JUSTID")])
                    cursor, ids = _text(reply[0]), reply[1]
                    adopted += len(ids)
                    if cursor == "0-0":
                        break
            return adopted

        adopted = self._call_grouped("xautoclaim", adopt)
        if adopted:
            self._history = dict.fromkeys(self._stream_keys, "0")  # read them first
            log.info("bus.pending_adopted", group=self.group, consumer=self.name, count=adopted)
        return adopted

    def backlog(self) -> int | None:
        def lag() -> int | None:
            total = 0
            for key in self._stream_keys:
                groups = self._redis.xinfo_groups(key)
                mine = [g for g in groups if _text(g["name"]) == self.group]
                if not mine or mine[0].get("lag") is None:
                    return None  # Redis < 7 has no lag; 7 may not know it after a trim
                total += int(mine[0]["lag"])
            return total

        return self._call_grouped("xinfo_groups", lag)

    def pending_count(self) -> int:
        def count() -> int:
            total = 0
            for key in self._stream_keys:
                total += int(self._redis.xpending(key, self.group)["pending"])
            return total

        return self._call_grouped("xpending", count)
