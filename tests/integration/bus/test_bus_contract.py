"""One contract, two buses: the in-memory bus and the Redis Streams bus must behave the same."""

from __future__ import annotations

import threading
import time

import pytest
from structlog.testing import capture_logs

from engine.bus import ConsumerLoop, ConsumeSettings
from engine.events import Envelope, decode, encode
from tests.events import heartbeat

IDLE_MS = 50


def settings(**overrides: float) -> ConsumeSettings:
    values: dict[str, float] = dict(
        batch_size=10,
        block_ms=0,
        claim_idle_ms=IDLE_MS,
        reclaim_interval_ms=1,
        max_deliveries=3,
        retry_backoff_s=0,
    )
    values.update(overrides)
    return ConsumeSettings(**values)  # type: ignore[arg-type]


def numbers(deliveries) -> list[int]:
    return [d.event.payload.processed for d in deliveries]


def drain(loop: ConsumerLoop, rounds: int = 50) -> None:
    for _ in range(rounds):
        loop.run_once(block_ms=0)


def test_events_arrive_in_publish_order_per_topic_and_decode_equal(bus_factory):
    bus = bus_factory()
    published_a = [heartbeat(i, "a") for i in range(40)]
    published_b = [heartbeat(i, "b") for i in range(40)]
    for a, b in zip(published_a, published_b):
        bus.publish("alpha", a)
        bus.publish("beta", b)
    consumer = bus.consumer("svc", "c1", ["alpha", "beta"])
    received: dict[str, list[Envelope]] = {"alpha": [], "beta": []}
    while deliveries := consumer.read(7):
        for delivery in deliveries:
            received[delivery.topic].append(delivery.event)
        consumer.ack(deliveries)
    assert received["alpha"] == published_a
    assert received["beta"] == published_b
    assert consumer.pending_count() == 0


def test_publish_many_keeps_order_and_ids_increase(bus_factory):
    bus = bus_factory()
    events = [heartbeat(i) for i in range(25)]
    ids = bus.publish_many("alpha", events)
    assert len(ids) == 25 and len(set(ids)) == 25
    parsed = [tuple(int(part) for part in i.split("-")) for i in ids]
    assert parsed == sorted(parsed)
    consumer = bus.consumer("svc", "c1", ["alpha"])
    assert [d.event for d in consumer.read(100)] == events


def test_new_group_sees_messages_published_before_it_joined(bus_factory):
    bus = bus_factory()
    bus.publish_many("alpha", [heartbeat(i) for i in range(5)])
    late = bus.consumer("late-service", "c1", ["alpha"])
    assert [d.event.payload.processed for d in late.read(10)] == [0, 1, 2, 3, 4]


def test_two_consumers_in_one_group_split_the_work_without_overlap(bus_factory):
    bus = bus_factory()
    bus.publish_many("alpha", [heartbeat(i) for i in range(60)])
    seen: dict[str, list[int]] = {"c1": [], "c2": []}
    loops = {
        name: ConsumerLoop(
            bus_factory().consumer("svc", name, ["alpha"]),
            lambda event, name=name: seen[name].append(event.payload.processed),
            settings(),
        )
        for name in seen
    }
    for _ in range(10):
        for loop in loops.values():
            loop.run_once(block_ms=0)
    assert seen["c1"] and seen["c2"], "both members should get a share"
    assert sorted(seen["c1"] + seen["c2"]) == list(range(60))
    assert not set(seen["c1"]) & set(seen["c2"])


def test_each_group_receives_every_message(bus_factory):
    bus = bus_factory()
    bus.publish_many("alpha", [heartbeat(i) for i in range(12)])
    got: dict[str, list[int]] = {"factor-update": [], "signal": []}
    for group in got:
        drain(
            ConsumerLoop(
                bus.consumer(group, "c1", ["alpha"]),
                lambda e, g=group: got[g].append(e.payload.processed),
                settings(),
            )
        )
    assert got["factor-update"] == list(range(12)) == got["signal"]


def test_consumer_killed_before_ack_loses_nothing_and_effect_happens_once(bus_factory):
    bus = bus_factory()
    bus.publish_many("alpha", [heartbeat(i) for i in range(6)])
    doomed = bus_factory().consumer("svc", "doomed", ["alpha"])
    taken = doomed.read(3)  # read, then "killed": no handler ran, no ack
    assert len(taken) == 3
    doomed.close()

    effects: list[int] = []
    survivor = ConsumerLoop(
        bus_factory().consumer("svc", "survivor", ["alpha"]),
        lambda e: effects.append(e.payload.processed),
        settings(),
    )
    survivor.run_once(block_ms=0)  # reclaim finds nothing idle yet; reads the 3 new ones
    assert sorted(effects) == [3, 4, 5]
    time.sleep(IDLE_MS * 2 / 1000)
    survivor.reclaim()
    assert sorted(effects) == [0, 1, 2, 3, 4, 5]
    assert survivor.stats.reclaimed == 3
    assert survivor.consumer.pending_count() == 0


def test_republished_event_with_same_id_is_applied_once(bus_factory):
    bus = bus_factory()
    event = heartbeat(7)
    bus.publish("alpha", event)
    bus.publish("alpha", event)  # a publisher retry after a lost reply
    bus.publish("alpha", heartbeat(8))
    effects: list[str] = []
    loop = ConsumerLoop(
        bus.consumer("svc", "c1", ["alpha"]), lambda e: effects.append(e.id), settings()
    )
    drain(loop)
    assert effects == [event.id, effects[1]] and len(effects) == 2
    assert loop.stats.duplicates == 1
    assert loop.consumer.pending_count() == 0


def test_undecodable_message_is_dead_lettered_with_reason_and_the_rest_flow_on(bus_factory):
    bus = bus_factory()
    bus.publish("alpha", heartbeat(1))
    bad = encode(heartbeat(2)).replace(b'"processed":2', b'"processed":"two"')
    bus.publish_raw("alpha", bad)
    bus.publish_raw("alpha", b"\x00not json")
    bus.publish("alpha", heartbeat(3))
    effects: list[int] = []
    loop = ConsumerLoop(
        bus.consumer("svc", "c1", ["alpha"]),
        lambda e: effects.append(e.payload.processed),
        settings(),
    )
    drain(loop)
    assert effects == [1, 3]
    letters = bus.dead_letters()
    assert [letter.data for letter in letters] == [bad, b"\x00not json"]
    assert "payload.processed" in letters[0].reason and "int" in letters[0].reason
    assert "not a JSON event" in letters[1].reason
    assert all(letter.group == "svc" and letter.topic == "alpha" for letter in letters)
    assert loop.consumer.pending_count() == 0


def test_message_whose_consumers_keep_dying_is_dead_lettered(bus_factory):
    bus = bus_factory()
    bus.publish("alpha", heartbeat(9))
    for attempt in range(3):  # three members each take it and die
        member = bus_factory().consumer("svc", f"dies-{attempt}", ["alpha"])
        taken = member.read(1) if attempt == 0 else member.reclaim(0, 10)
        assert len(taken) == 1 and taken[0].attempts == attempt + 1
    time.sleep(IDLE_MS * 2 / 1000)
    effects: list[int] = []
    loop = ConsumerLoop(
        bus.consumer("svc", "last", ["alpha"]),
        lambda e: effects.append(e.payload.processed),
        settings(max_deliveries=3),
    )
    loop.reclaim()
    assert effects == []
    (letter,) = bus.dead_letters()
    assert "died or stalled" in letter.reason and letter.attempts == 4
    assert loop.consumer.pending_count() == 0


def test_consumed_history_returns_acknowledged_events_only_oldest_first(bus_factory):
    bus = bus_factory()
    bus.publish_many("alpha", [heartbeat(i) for i in range(10)])
    consumer = bus.consumer("svc", "c1", ["alpha"])
    assert bus.consumed_history("svc", "alpha", 5) == []
    first = consumer.read(6)
    consumer.ack(first[:4])  # 4 and 5 stay pending (the process "died" holding them)
    history = bus.consumed_history("svc", "alpha", 3)
    assert [e.payload.processed for e in history] == [1, 2, 3]
    assert [e.payload.processed for e in bus.consumed_history("svc", "alpha", 100)] == [0, 1, 2, 3]
    assert bus.consumed_history("other-group", "alpha", 3) == []
    assert bus.consumed_history("svc", "never_published", 3) == []


def test_last_event_is_the_newest_of_its_topic_whoever_consumed_it(bus_factory):
    bus = bus_factory()
    assert bus.last_event("alpha") is None
    events = [heartbeat(i) for i in range(3)]
    bus.publish_many("alpha", events)
    bus.publish("beta", heartbeat(9))
    assert bus.last_event("alpha") == events[-1]
    bus.consumer("svc", "c1", ["alpha"]).read(10)  # reading takes nothing away
    assert bus_factory().last_event("alpha") == events[-1]
    assert bus.last_event("beta").payload.processed == 9


# -- stable names: a member created again under its name reads its own pending entries first --


def test_member_recreated_under_its_name_gets_exactly_its_pending_entries_first_in_order(
    bus_factory,
):
    bus = bus_factory()
    bus.publish_many("alpha", [heartbeat(i) for i in range(6)])
    doomed = bus_factory().consumer("svc", "svc-box-1", ["alpha"])
    assert numbers(doomed.read(4)) == [0, 1, 2, 3]  # read a batch, then died: no ack
    doomed.close()
    bus.publish_many("alpha", [heartbeat(i) for i in range(6, 8)])

    again = bus_factory().consumer("svc", "svc-box-1", ["alpha"])
    first = again.read(4)
    assert numbers(first) == [0, 1, 2, 3]
    assert [d.attempts for d in first] == [2, 2, 2, 2]  # the replay is one more delivery
    again.ack(first)
    rest = again.read(10)
    assert numbers(rest) == [4, 5, 6, 7] and [d.attempts for d in rest] == [1] * 4
    again.ack(rest)
    assert again.read(10) == [] and again.pending_count() == 0


def test_the_read_that_hands_out_the_last_own_entries_fills_up_with_new_ones(bus_factory):
    bus = bus_factory()
    bus.publish_many("alpha", [heartbeat(i) for i in range(6)])
    bus_factory().consumer("svc", "c1", ["alpha"]).read(3)  # died holding 0-2
    bus.publish_many("alpha", [heartbeat(6)])
    again = bus_factory().consumer("svc", "c1", ["alpha"])
    taken = again.read(10, block_ms=5_000)  # returns at once: it has something
    assert numbers(taken) == [0, 1, 2, 3, 4, 5, 6]
    assert [d.attempts for d in taken] == [2, 2, 2, 1, 1, 1, 1]


def test_own_pending_entries_come_back_in_pages_of_the_read_count(bus_factory):
    bus = bus_factory()
    bus.publish_many("alpha", [heartbeat(i) for i in range(7)])
    bus_factory().consumer("svc", "c1", ["alpha"]).read(5)
    again = bus_factory().consumer("svc", "c1", ["alpha"])
    pages = [numbers(again.read(2)) for _ in range(4)]
    assert pages == [[0, 1], [2, 3], [4, 5], [6]]


def test_a_member_under_another_name_does_not_get_them_until_reclaim(bus_factory):
    bus = bus_factory()
    bus.publish_many("alpha", [heartbeat(i) for i in range(6)])
    bus_factory().consumer("svc", "svc-box-1", ["alpha"]).read(4)  # died holding 0-3
    other = bus_factory().consumer("svc", "svc-box-2", ["alpha"])
    taken = other.read(10)
    assert numbers(taken) == [4, 5]
    other.ack(taken)
    assert other.read(10) == []
    time.sleep(IDLE_MS * 2 / 1000)
    assert numbers(other.reclaim(IDLE_MS, 10)) == [0, 1, 2, 3]


def test_restarted_loop_handles_its_own_pending_first_without_waiting_for_reclaim(bus_factory):
    bus = bus_factory()
    bus.publish_many("alpha", [heartbeat(i) for i in range(5)])
    bus_factory().consumer("svc", "svc-box-1", ["alpha"]).read(3)  # died holding 0-2
    bus.publish_many("alpha", [heartbeat(i) for i in range(5, 8)])
    effects: list[int] = []
    loop = ConsumerLoop(
        bus_factory().consumer("svc", "svc-box-1", ["alpha"]),
        lambda e: effects.append(e.payload.processed),
        settings(claim_idle_ms=60_000),  # reclaim would not hand them back for a minute
    )
    loop.run_once(block_ms=0)
    assert effects == list(range(8))  # its own pending entries first, at once, then the rest
    assert loop.stats.reclaimed == 0 and loop.consumer.pending_count() == 0


def test_message_whose_consumer_keeps_dying_under_the_same_name_is_dead_lettered(bus_factory):
    bus = bus_factory()
    bus.publish("alpha", heartbeat(9))
    for attempt in range(1, 4):  # a crash loop: each start takes it back, then dies
        (taken,) = bus_factory().consumer("svc", "svc-box-1", ["alpha"]).read(10)
        assert taken.attempts == attempt
    effects: list[int] = []
    loop = ConsumerLoop(
        bus_factory().consumer("svc", "svc-box-1", ["alpha"]),
        lambda e: effects.append(e.payload.processed),
        settings(max_deliveries=3),
    )
    loop.run_once(block_ms=0)
    assert effects == []
    (letter,) = bus.dead_letters()
    assert "died or stalled" in letter.reason and letter.attempts == 4
    assert loop.consumer.pending_count() == 0


# -- retry in place: a failed message is retried before anything after it ---------------------


def failed_attempts(logs: list[dict]) -> list[tuple[int, int]]:
    return [
        (log["attempt"], log["max_deliveries"])
        for log in logs
        if log["event"] == "bus.handler_failed"
    ]


def test_failing_message_is_retried_in_place_and_nothing_overtakes_it(bus_factory):
    bus = bus_factory()
    bus.publish_many("alpha", [heartbeat(i) for i in range(1, 6)])
    calls: list[int] = []
    effects: list[int] = []
    failures = {3: 2}  # message 3 fails twice, then succeeds

    def handler(event: Envelope) -> None:
        number = event.payload.processed
        calls.append(number)
        if failures.get(number):
            failures[number] -= 1
            raise ConnectionError("broker timeout")
        effects.append(number)

    loop = ConsumerLoop(bus.consumer("svc", "c1", ["alpha"]), handler, settings(batch_size=3))
    with capture_logs() as logs:
        drain(loop, rounds=3)
    assert calls == [1, 2, 3, 3, 3, 4, 5]
    assert effects == [1, 2, 3, 4, 5]  # in order, each once
    assert failed_attempts(logs) == [(1, 3), (2, 3)]
    assert bus.dead_letters() == []
    assert loop.stats.failed == 2 and loop.stats.processed == 5
    assert loop.consumer.pending_count() == 0


def test_message_failing_every_attempt_is_dead_lettered_before_the_next_is_handled(bus_factory):
    bus = bus_factory()
    bus.publish_many("alpha", [heartbeat(i) for i in range(1, 6)])
    calls: list[int] = []
    effects: list[int] = []

    def handler(event: Envelope) -> None:
        calls.append(event.payload.processed)
        if event.payload.processed == 3:
            raise ValueError("cannot price asset")
        effects.append(event.payload.processed)

    loop = ConsumerLoop(bus.consumer("svc", "c1", ["alpha"]), handler, settings(max_deliveries=3))
    with capture_logs() as logs:
        loop.run_once(block_ms=0)
    assert calls == [1, 2, 3, 3, 3, 4, 5]
    assert effects == [1, 2, 4, 5]
    assert failed_attempts(logs) == [(1, 3), (2, 3), (3, 3)]
    events = [log["event"] for log in logs]
    assert events.index("bus.dead_lettered") > max(
        i for i, e in enumerate(events) if e == "bus.handler_failed"
    )
    (letter,) = bus.dead_letters()
    assert letter.attempts == 3 and letter.group == "svc" and letter.topic == "alpha"
    assert "ValueError: cannot price asset" in letter.reason and "attempt 3 of 3" in letter.reason
    assert decode(letter.data).payload.processed == 3
    assert loop.stats.dead_lettered == 1 and loop.stats.failed == 3
    assert loop.consumer.pending_count() == 0


def test_redelivered_message_gets_only_the_attempts_it_has_left(bus_factory):
    bus = bus_factory()
    bus.publish("alpha", heartbeat(1))
    bus_factory().consumer("svc", "c1", ["alpha"]).read(10)  # a first delivery, then a crash
    calls: list[int] = []

    def handler(event: Envelope) -> None:
        calls.append(event.payload.processed)
        raise ValueError("still broken")

    loop = ConsumerLoop(
        bus_factory().consumer("svc", "c1", ["alpha"]), handler, settings(max_deliveries=3)
    )
    loop.run_once(block_ms=0)
    assert calls == [1, 1]  # attempts 2 and 3 of 3
    assert bus.dead_letters()[0].attempts == 3


def test_stop_during_a_retry_leaves_the_message_and_the_rest_pending_for_a_restart(bus_factory):
    bus = bus_factory()
    bus.publish_many("alpha", [heartbeat(i) for i in range(1, 6)])
    stop = threading.Event()
    effects: list[int] = []

    def failing_then_stopped(event: Envelope) -> None:
        if event.payload.processed == 3:
            stop.set()  # SIGTERM arrives while message 3 fails
            raise ConnectionError("broker timeout")
        effects.append(event.payload.processed)

    loop = ConsumerLoop(
        bus_factory().consumer("svc", "svc-box-1", ["alpha"]),
        failing_then_stopped,
        settings(retry_backoff_s=30),  # the backoff is cut short by the stop
    )
    loop.stop = stop
    started = time.monotonic()
    with capture_logs() as logs:
        loop.run_once(block_ms=0)
    assert time.monotonic() - started < 5
    assert effects == [1, 2]
    assert loop.consumer.pending_count() == 3  # 3, 4, 5: not acknowledged, not dropped
    assert any(log["event"] == "bus.retry_interrupted" for log in logs)
    assert bus.dead_letters() == []

    restarted = ConsumerLoop(
        bus_factory().consumer("svc", "svc-box-1", ["alpha"]),
        lambda e: effects.append(e.payload.processed),
        settings(claim_idle_ms=60_000),
    )
    restarted.run_once(block_ms=0)
    assert effects == [1, 2, 3, 4, 5]
    assert restarted.consumer.pending_count() == 0


class Crash(BaseException):
    """What a SIGKILL does to a handler: nothing after it runs, nothing is acknowledged."""


@pytest.mark.parametrize("commit_each_message", [True, False])
def test_commit_each_message_leaves_only_the_rest_of_a_crashed_batch_pending(
    bus_factory, commit_each_message
):
    bus = bus_factory()
    bus.publish_many("alpha", [heartbeat(i) for i in range(8)])

    def crashes_on_5(event: Envelope) -> None:
        if event.payload.processed == 5:
            raise Crash

    loop = ConsumerLoop(
        bus_factory().consumer("svc", "c1", ["alpha"]),
        crashes_on_5,
        settings(commit_each_message=commit_each_message),
    )
    with pytest.raises(Crash):
        loop.run_once(block_ms=0)
    again = bus_factory().consumer("svc", "c1", ["alpha"])
    expected = [5, 6, 7] if commit_each_message else list(range(8))
    assert numbers(again.read(10)) == expected
