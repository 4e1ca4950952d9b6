"""The archive writes every event of its topics to the run's event log, one line each, on disk
before the batch is acknowledged; the log reads back deduplicated by event id, in file order,
with a torn last line ignored; a continued log first drops a torn tail, a new one starts empty."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from engine.bus import ConsumeSettings, MemoryBus
from engine.clock import SimulatedClock
from engine.config import load_config
from engine.events import Control, Heartbeat, RebalanceDue, encode, make_event
from services.daemons.archive import (
    ArchiveService,
    EventLogError,
    archive_topics,
    read_event_log,
)
from services.runtime.assembly import build_services
from services.runtime.loop import ServiceRunner
from tests.events import bar_set, heartbeat, order_request

T0 = datetime(2024, 1, 1, tzinfo=UTC)
TOPICS = ("control", "bars", "schedule", "orders")


def tick(day: int):
    due = datetime(2024, 1, day, tzinfo=UTC)
    payload = RebalanceDue(
        rebalance_id=f"rb-weekly-{day}", schedule="weekly", due=due, decision_time=due
    )
    return make_event(payload, source="market-data", corr=payload.rebalance_id, ts=due)


def runner_of(archive: ArchiveService) -> ServiceRunner:
    return ServiceRunner(archive, ConsumeSettings(block_ms=0, batch_size=100), heartbeat_s=3600)


def test_every_event_of_its_topics_is_one_line_in_the_bus_encoding(tmp_path):
    bus = MemoryBus()
    path = tmp_path / "events.jsonl"
    runner = runner_of(ArchiveService(bus, SimulatedClock(T0), path, TOPICS))
    events = [
        ("bars", make_event(bar_set(3), source="market-data", ts=T0)),
        ("schedule", tick(2)),
        ("orders", order_request(1)),
        ("control", make_event(Control(command="halt", reason="end"), source="market-data")),
        ("heartbeat", heartbeat(1)),  # not a topic of the archive
    ]
    for topic, event in events:
        bus.publish(topic, event)
    assert runner.loop.run_once(block_ms=0) == 4

    lines = path.read_bytes().splitlines()
    # One consumer reads its topics in its own order: same events, compared as a set of lines.
    assert sorted(lines) == sorted(encode(e) for t, e in events if t != "heartbeat")
    assert runner.loop.consumer.pending_count() == 0
    assert [e.id for e in read_event_log(path)] == [
        e.id for e in (events[3][1], events[0][1], events[1][1], events[2][1])
    ]  # control first, then per topic in the archive's order


def test_the_lines_of_a_batch_are_on_disk_before_the_batch_is_committed(tmp_path):
    bus = MemoryBus()
    path = tmp_path / "events.jsonl"
    runner = runner_of(ArchiveService(bus, SimulatedClock(T0), path, TOPICS))
    consumer = runner.loop.consumer
    seen_at_commit: list[tuple[int, int]] = []  # (lines on disk, deliveries committed)
    commit = consumer.commit

    def checking_commit(deliveries, state=None, publish=()):
        seen_at_commit.append((len(path.read_bytes().splitlines()), len(deliveries)))
        commit(deliveries, state, publish)

    consumer.commit = checking_commit  # type: ignore[method-assign]
    for sequence in range(3):
        bus.publish("orders", order_request(sequence))
    runner.loop.run_once(block_ms=0)
    for sequence in range(3, 5):
        bus.publish("orders", order_request(sequence))
    runner.loop.run_once(block_ms=0)
    assert seen_at_commit == [(3, 3), (5, 2)]


def test_an_unwritable_log_leaves_the_batch_unacknowledged(tmp_path):
    bus = MemoryBus()
    path = tmp_path / "events.jsonl"
    archive = ArchiveService(bus, SimulatedClock(T0), path, TOPICS)
    runner = runner_of(archive)
    bus.publish("orders", order_request(1))
    path.unlink()
    path.mkdir()  # opening it for appending now fails
    with capture_logs() as logs, pytest.raises(IsADirectoryError):
        runner.loop.run_once(block_ms=0)
    assert runner.loop.consumer.pending_count() == 1
    assert [entry["event"] for entry in logs] == ["archive.write_failed"]


def test_reading_keeps_each_event_id_once_at_its_first_line(tmp_path):
    path = tmp_path / "events.jsonl"
    a, b, c = order_request(1), order_request(2), tick(3)
    # A batch written, then written again after a crash before its acknowledgement.
    path.write_bytes(b"".join(encode(e) + b"\n" for e in (a, b, a, b, c, b)))
    with capture_logs() as logs:
        assert read_event_log(path) == [a, b, c]
    assert logs[0]["event"] == "archive.duplicates_skipped" and logs[0]["lines"] == 3


def test_a_torn_last_line_is_ignored_with_a_log_line(tmp_path):
    path = tmp_path / "events.jsonl"
    a, b = order_request(1), order_request(2)
    torn = encode(b)[:57]
    path.write_bytes(encode(a) + b"\n" + torn)
    with capture_logs() as logs:
        assert read_event_log(path) == [a]
    assert len(logs) == 1
    assert logs[0]["event"] == "archive.torn_line_ignored"
    assert logs[0]["line"] == 2 and logs[0]["bytes"] == len(torn)
    assert logs[0]["log_level"] == "warning"


def test_a_bad_line_before_the_last_names_the_file_and_line(tmp_path):
    path = tmp_path / "events.jsonl"
    a, b = order_request(1), order_request(2)
    path.write_bytes(encode(a) + b"\n" + encode(b)[:40] + b"\n" + encode(b) + b"\n")
    with pytest.raises(EventLogError, match=r"events\.jsonl: line 2: bad event"):
        read_event_log(path)


def test_a_continued_log_drops_a_torn_tail_then_appends_whole_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    a, b = order_request(1), order_request(2)
    path.write_bytes(encode(a) + b"\n" + encode(b)[:100])  # killed mid-write
    bus = MemoryBus()
    with capture_logs() as logs:
        runner = runner_of(ArchiveService(bus, SimulatedClock(T0), path, TOPICS))
    assert logs[0]["event"] == "archive.torn_line_dropped" and logs[0]["bytes"] == 100
    assert path.read_bytes() == encode(a) + b"\n"
    bus.publish("orders", b)  # the torn event, delivered again
    runner.loop.run_once(block_ms=0)
    with capture_logs() as logs:
        assert read_event_log(path) == [a, b]
    assert logs == []


def test_a_torn_tail_longer_than_a_read_chunk_is_dropped_whole(tmp_path):
    path = tmp_path / "events.jsonl"
    a = order_request(1)
    path.write_bytes(encode(a) + b"\n" + b'{"id":"' + b"x" * 200_000)
    ArchiveService(MemoryBus(), SimulatedClock(T0), path, TOPICS)
    assert path.read_bytes() == encode(a) + b"\n"
    path.write_bytes(b"x" * 70_000)  # no whole line at all
    ArchiveService(MemoryBus(), SimulatedClock(T0), path, TOPICS)
    assert path.read_bytes() == b""


def test_a_new_account_starts_the_log_afresh_and_a_resumed_one_continues_it(tmp_path):
    path = tmp_path / "events.jsonl"
    a = order_request(1)
    path.write_bytes(encode(a) + b"\n")
    ArchiveService(MemoryBus(), SimulatedClock(T0), path, TOPICS)
    assert read_event_log(path) == [a]
    ArchiveService(MemoryBus(), SimulatedClock(T0), path, TOPICS, new_log=True)
    assert path.read_bytes() == b""


def test_the_archive_reads_every_topic_of_a_run_but_heartbeats_control_first():
    services = build_services(load_config(None, environ={}), MemoryBus(), SimulatedClock(T0))
    topics = archive_topics(services.all())
    assert topics[0] == "control"
    assert set(topics) == {
        "bars",
        "schedule",
        "factors",
        "signals",
        "targets",
        "orders",
        "order_updates",
        "fills",
        "portfolio",
        "risk",
        "control",
    }
    assert Heartbeat.TOPIC not in topics
    assert len(topics) == len(set(topics))
