"""The run directory's event log: every event of a paper run, one JSON line each.

``ArchiveService`` reads every topic the run uses through its own consumer group, ``archive``,
and appends each event to ``RUN_DIR/events.jsonl`` in the bus's own JSON encoding
(``engine.events.encode``). A batch's lines are written, flushed and fsynced before the batch
is acknowledged, so an acknowledged event is on disk. Delivery is at least once: a process
killed between the fsync and the acknowledgement writes that batch again when it resumes, so
a line may appear twice, and a process killed in the middle of a write leaves a torn last
line. ``read_event_log`` reads the file back as events, each event id once at its first line,
and ignores a torn last line with a log line. A resumed account appends to the file, after
cutting off a torn last line (its events were not acknowledged: they are written again); a new
account starts the file afresh.

Heartbeats are left out: they say how the processes ran, not what the account did.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import structlog

from engine.bus import Bus
from engine.clock import Clock
from engine.errors import DataError, EventDecodeError
from engine.events import (
    BarSet,
    Control,
    Envelope,
    RebalanceDue,
    TargetPortfolio,
    decode,
    encode,
)
from services.runtime.loop import Service

log = structlog.get_logger("services.daemons.archive")
EVENT_LOG = "events.jsonl"
# Topics only producers write, or that no service reads: the feed's bars, ticks and controls,
# and the rebalancer's targets. With every consuming service's topics, they are the run's.
PRODUCED_TOPICS: tuple[str, ...] = (
    Control.TOPIC,
    BarSet.TOPIC,
    RebalanceDue.TOPIC,
    TargetPortfolio.TOPIC,
)
_CHUNK = 1 << 16


class EventLogError(DataError):
    """An event log line other than a torn last one cannot be read; names the file and line."""


def archive_topics(services: Iterable[Service]) -> tuple[str, ...]:
    """Every topic ``services`` read, then the producers' own topics, each once.

    ``control`` comes first (every service lists it first): the archive's reads then return a
    control before a bar published after it, as every service sees them.
    """
    topics = [Control.TOPIC]
    for service in services:
        topics.extend(service.topics)
    topics.extend(PRODUCED_TOPICS)
    return tuple(dict.fromkeys(topics))


class ArchiveService(Service):
    """Append every event of ``topics`` to the event log at ``path``.

    ``new_log``: the account is new, so an existing file (an earlier account's) is emptied;
    otherwise the file is continued, after dropping a torn last line.

    The lines of a batch are held in memory by ``handle`` and written by ``sync``, which the
    runner's commit calls (through ``take_outbox``) before it acknowledges the batch.
    """

    name = "archive"

    def __init__(
        self,
        bus: Bus,
        clock: Clock,
        path: Path,
        topics: Iterable[str],
        *,
        new_log: bool = False,
    ) -> None:
        self.path = Path(path)
        self._topics = tuple(dict.fromkeys(topics))
        self._lines: list[bytes] = []
        self.written = 0
        super().__init__(bus, clock)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if new_log or not self.path.exists():
            self._create()
        else:
            _drop_torn_tail(self.path)

    @property
    def topics(self) -> tuple[str, ...]:
        return self._topics

    def handle(self, event: Envelope) -> None:
        """Hold the event's line until the batch is synced (every type, controls included:
        the archive never halts)."""
        self._lines.append(encode(event))

    def take_outbox(self) -> list[tuple[str, list[Envelope]]]:
        """Called by the consume loop right before it commits the batch: the batch's lines
        reach the disk first. The archive emits nothing itself."""
        self.sync()
        return super().take_outbox()

    def sync(self) -> int:
        """Append the held lines to the log, flush and fsync; return how many were written.

        Raises
        ------
        OSError
            The file cannot be written; the batch is then not acknowledged.
        """
        if not self._lines:
            return 0
        lines, self._lines = self._lines, []
        data = b"\n".join(lines) + b"\n"
        try:
            with self.path.open("ab") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            log.error(
                "archive.write_failed",
                path=str(self.path),
                events=len(lines),
                error=error.strerror or str(error),
            )
            raise
        self.written += len(lines)
        return len(lines)

    def _create(self) -> None:
        with self.path.open("wb") as handle:
            handle.flush()
            os.fsync(handle.fileno())
        # The new name itself must survive a crash too.
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line with no newline (a write killed midway) off the end of ``path``."""
    with path.open("rb+") as handle:
        size = end = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        while end > 0:
            start = max(0, end - _CHUNK)
            handle.seek(start)
            chunk = handle.read(end - start)
            if end == size and chunk.endswith(b"\n"):
                return  # the common case: the file ends with a whole line
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        handle.truncate(end)
        handle.flush()
        os.fsync(handle.fileno())
    log.warning(
        "archive.torn_line_dropped",
        path=str(path),
        bytes=size - end,
        hint="a run was killed while writing it; its events are written again",
    )


def read_event_log(path: str | Path) -> list[Envelope]:
    """Return the events of the log at ``path`` in file order, each event id once (its first
    line). A torn last line (no newline, not a whole event) is ignored with
    ``archive.torn_line_ignored``.

    Raises
    ------
    EventLogError
        Another line is not a valid event; the message names the file, the line and why.
    OSError
        The file cannot be read.
    """
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    last = len(lines)
    events: list[Envelope] = []
    seen: set[str] = set()
    duplicates = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = decode(line)
        except EventDecodeError as error:
            if number == last:  # the file does not end with a newline: cut off mid-write
                log.warning(
                    "archive.torn_line_ignored",
                    path=str(path),
                    line=number,
                    bytes=len(line),
                    error=str(error),
                )
                continue
            raise EventLogError(f"{path}: line {number}: {error}") from None
        if event.id in seen:
            duplicates += 1
            continue
        seen.add(event.id)
        events.append(event)
    if duplicates:
        log.info("archive.duplicates_skipped", path=str(path), lines=duplicates)
    return events
