"""``deepfactor status`` and ``tail`` read an account from Redis alone: checked here on a real
Redis against streams written by hand, so every expected figure is known in advance."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from engine.bus import RedisBus, keys
from engine.config import load_config
from engine.events import (
    BarSet,
    Heartbeat,
    OrderRequest,
    PortfolioSnapshot,
    Signal,
    TargetPortfolio,
    make_event,
)
from services.commands.status import account_status, render_status
from services.commands.tail import check_topics, follow, format_line, run_tail

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def bus(redis_url: str, namespace: str):
    bus = RedisBus(redis_url, namespace, give_up_after_s=5)
    bus.redis.set(keys.account(namespace), "1")
    yield bus
    bus.close()


def beat(service: str, status: str = "running", interval: float = 1.0, **fields) -> Heartbeat:
    return Heartbeat(
        service=service,
        instance=f"{service}-box",
        pid=100,
        status=status,  # type: ignore[arg-type]
        interval_s=interval,
        **fields,
    )


def snapshot(day: int, equity: float) -> PortfolioSnapshot:
    return PortfolioSnapshot(
        asof=datetime(2026, 3, day, tzinfo=UTC),
        equity=equity,
        cash=equity,
        positions={},
        prices={},
        gross_exposure=0.0,
        high_water_mark=equity,
        drawdown=0.0,
        expected_var=0.012,
    )


def bars(day: int) -> BarSet:
    return BarSet(
        bar_open=datetime(2026, 3, day, tzinfo=UTC),
        symbols=("A", "B"),
        open=(1.0, 2.0),
        high=(1.0, 2.0),
        low=(1.0, 2.0),
        close=(1.0, 2.0),
    )


def test_services_are_alive_stale_or_stopped_by_their_newest_heartbeat(bus: RedisBus) -> None:
    publish = bus.publish
    # An old beat of the execution instance, then a fresh one: the fresh one counts.
    publish("heartbeat", make_event(beat("execution"), source="x", ts=NOW - timedelta(hours=1)))
    publish(
        "heartbeat",
        make_event(
            beat("execution", processed=7, lag=3, pending=1, last_event_type="OrderRequest"),
            source="x",
            ts=NOW - timedelta(seconds=1),
        ),
    )
    # Silent for 4 s at a 1 s interval: more than three missed beats.
    publish("heartbeat", make_event(beat("signal"), source="x", ts=NOW - timedelta(seconds=4)))
    publish(
        "heartbeat",
        make_event(beat("rebalance", status="stopping"), source="x", ts=NOW - timedelta(hours=2)),
    )
    status = account_status(bus, load_config(None, {}), now=NOW)
    rows = {row["service"]: row for row in status["services"]}
    assert {name: row["state"] for name, row in rows.items()} == {
        "execution": "alive",
        "signal": "stale",
        "rebalance": "stopped",
    }
    execution = rows["execution"]
    assert (execution["processed"], execution["lag"], execution["pending"]) == (7, 3, 1)
    assert execution["last_event"] == "OrderRequest"
    assert execution["heartbeat_age_s"] == 1.0
    text = render_status(status, "runs/x")
    assert "stale" in text and "OrderRequest" in text


def test_groups_report_pending_and_lag_summed_over_their_topics(bus: RedisBus) -> None:
    consumer = bus.consumer("factor-update", "factor-update-box", ["bars", "control"])
    consumer.ensure_groups()
    for day in range(1, 6):
        bus.publish("bars", make_event(bars(day), source="market-data"))
    delivered = consumer.read(3)
    consumer.ack(delivered[:1])  # two delivered and not acknowledged, two never delivered
    version = int(bus.redis.info("server")["redis_version"].split(".")[0])
    status = account_status(bus, load_config(None, {}), now=NOW)
    group = status["groups"]["factor-update"]
    assert group["pending"] == 2
    assert group["lag"] == (2 if version >= 7 else None)
    assert consumer.backlog() == group["lag"]
    assert "factor-update (pending 2" in render_status(status, "runs/x")


def test_day_pnl_model_and_last_rebalance_come_from_the_newest_events(bus: RedisBus) -> None:
    equities = {1: 100.0, 2: 104.0, 3: 103.0}
    for day, equity in equities.items():
        bus.publish("portfolio", make_event(snapshot(day, equity), source="rebalance"))
    for model in ("lstm-v1", "lstm-v2"):
        signal = Signal(
            asof=NOW,
            model=model,
            factor_weights={"mom": 1.0},
            symbols=("A",),
            scores=(0.5,),
            selected=("mom",),
        )
        bus.publish("signals", make_event(signal, source="signal"))
    target = TargetPortfolio(
        rebalance_id="rb-1",
        asof=NOW,
        symbols=("A", "B", "C"),
        weights=(0.4, 0.0, 0.3),
        cash_weight=0.3,
        risk_actions=("var_limit",),
    )
    bus.publish("targets", make_event(target, source="rebalance"))
    status = account_status(bus, load_config(None, {}), now=NOW)
    day = status["portfolio"]["day"]
    # The newest snapshot (day 3) against the newest at least a day older (day 2).
    assert day["pnl"] == pytest.approx(103.0 - 104.0)
    assert day["return"] == pytest.approx(-1.0 / 104.0)
    assert status["model"]["version"] == "lstm-v2"
    last = status["last_rebalance"]
    assert (last["rebalance_id"], last["positions"], last["gross"]) == ("rb-1", 2, 0.7)
    assert last["risk_actions"] == ["var_limit"]
    assert status["limits"]["var_limit"] == load_config(None, {}).risk.var_limit


def test_tail_shows_the_newest_then_follows_new_events_in_order(bus: RedisBus) -> None:
    for day in (1, 2, 3):
        bus.publish("bars", make_event(bars(day), source="market-data"))
    order = OrderRequest(
        client_order_id="rb-1-A",
        rebalance_id="rb-1",
        asof=NOW,
        symbol="A",
        side="buy",
        quantity=2.5,
    )
    stop = threading.Event()
    lines: list[str] = []

    def publish_later() -> None:
        time.sleep(0.3)
        bus.publish("orders", make_event(order, source="rebalance", ts=NOW))
        bus.publish_raw("bars", b"not an event")
        time.sleep(0.5)
        stop.set()

    writer = threading.Thread(target=publish_later)
    writer.start()
    printed = run_tail(bus, ("bars", "orders"), stop, lines.append, last=2)
    writer.join()
    assert printed == 4
    assert lines[0].endswith("BarSet            2026-03-02 00:00 2 symbols")
    assert "2026-03-03" in lines[1]
    assert lines[2] == format_line("orders", make_event(order, source="rebalance", ts=NOW))
    assert lines[2].endswith("OrderRequest      rb-1-A buy 2.5 A market")
    assert "undecodable entry (12 bytes)" in lines[3]


def test_tail_reads_without_a_group_and_refuses_unknown_topics(bus: RedisBus) -> None:
    bus.publish("bars", make_event(bars(1), source="market-data"))
    stop = threading.Event()
    stop.set()
    assert [t for t, *_ in follow(bus, ("bars",), stop, last=5)] == ["bars"]
    assert bus.redis.xinfo_groups(keys.stream(bus.namespace, "bars")) == []  # no group made
    assert "heartbeat" not in check_topics([]) and "orders" in check_topics([])
    assert check_topics(["heartbeat", "heartbeat"]) == ("heartbeat",)
    with pytest.raises(Exception, match="unknown topic 'trades'"):
        check_topics(["orders", "trades"])
