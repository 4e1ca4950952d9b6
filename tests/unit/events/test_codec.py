"""Events survive the wire unchanged, and bad messages fail with the field and the problem."""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import pytest
from hypothesis import given

from engine.errors import EventDecodeError
from engine.events import (
    PAYLOAD_TYPES,
    BarBlock,
    BarSet,
    Control,
    FactorSnapshot,
    Fill,
    Heartbeat,
    OrderUpdate,
    PortfolioMarks,
    PortfolioSnapshot,
    RebalanceDue,
    RiskAlert,
    Signal,
    TargetPortfolio,
    decode,
    encode,
    make_event,
)
from tests.events import T0, bar_set, order_request
from tests.strategies import bar_sets

DAY = timedelta(days=1)
NAN = math.nan


def bar_block(close: tuple) -> BarBlock:
    matrix = np.array(close, dtype=float).reshape(3, 2)
    return BarBlock.from_matrices(
        timeframe="1d",
        bar_open=(T0, T0 + DAY, T0 + 2 * DAY),
        symbols=("A", "B"),
        open=matrix,
        high=matrix,
        low=matrix,
        close=matrix,
        volume=np.where(np.isnan(matrix), NAN, 0.0),
    )


def portfolio_marks() -> PortfolioMarks:
    return PortfolioMarks(
        asof=(T0, T0 + DAY),
        equity=(1000.0, 1010.0),
        cash=979.0,
        positions={"A": 2.0},
        prices={"A": (10.5, 15.5)},
        gross_exposure=(0.021, 0.0307),
        high_water_mark=(1000.0, 1010.0),
        drawdown=(0.0, 0.0),
        fills_applied=1,
    )


ONE_OF_EACH = [
    bar_set(3),
    bar_block((1.0, 2.0, 1.5, 2.5, 1.25, 2.25)),
    portfolio_marks(),
    FactorSnapshot(
        asof=T0,
        symbols=("A", "B"),
        factor_names=("mom_12_1", "vol"),
        exposures=((0.5, -0.5), (None, 1.2)),
        factor_ic={"mom_12_1": 0.03, "vol": None},
        factor_returns={"mom_12_1": 0.01},
        market_state={"drawdown": 0.1},
    ),
    Signal(
        asof=T0,
        model="lstm-v1",
        factor_weights={"mom_12_1": 0.7, "vol": 0.3},
        symbols=("A", "B"),
        scores=(0.4, -0.1),
    ),
    RebalanceDue(rebalance_id="rb-1", schedule="cron:0 0 1 * *", due=T0, decision_time=T0),
    TargetPortfolio(
        rebalance_id="rb-1",
        asof=T0,
        symbols=("A",),
        weights=(0.6,),
        cash_weight=0.4,
        risk_actions=("var_limit",),
    ),
    order_request(1).payload,
    OrderUpdate(
        client_order_id="rb-1-A",
        status="filled",
        broker_order_id="b-9",
        filled_quantity=2.0,
        average_price=10.5,
    ),
    Fill(
        fill_id="f-1",
        client_order_id="rb-1-A",
        symbol="A",
        side="buy",
        quantity=2.0,
        price=10.5,
        fee=0.021,
        fee_currency="USDT",
        executed_at=T0,
    ),
    PortfolioSnapshot(
        asof=T0,
        equity=1000.0,
        cash=979.0,
        positions={"A": 2.0},
        prices={"A": 10.5},
        gross_exposure=0.021,
        high_water_mark=1000.0,
        drawdown=0.0,
        fills_applied=1,
    ),
    RiskAlert(
        kind="var_limit",
        severity="warning",
        message="VaR 99% above limit",
        action="scale_exposure",
        metrics={"var_99": 0.061, "limit": 0.05},
    ),
    Control(command="halt", flatten=True, reason="operator"),
    Heartbeat(service="signal", instance="h-1", pid=42, status="running", processed=3),
]


def test_every_payload_type_has_a_round_trip_case():
    assert {type(p) for p in ONE_OF_EACH} == set(PAYLOAD_TYPES)


@pytest.mark.parametrize("payload", ONE_OF_EACH, ids=lambda p: type(p).__name__)
def test_round_trip_preserves_every_field(payload):
    event = make_event(payload, source="test", corr="cycle-1")
    decoded = decode(encode(event))
    assert decoded == event
    assert decoded.type == type(payload).TYPE and decoded.v == 1
    assert decoded.ts.tzinfo is not None


@given(bar_sets())
def test_any_valid_bar_set_round_trips(payload):
    event = make_event(payload, source="market-data")
    assert decode(encode(event)) == event


def test_encoded_event_is_readable_json_with_the_envelope_fields():
    raw = msgspec.json.decode(encode(order_request(3)))
    assert set(raw) == {"id", "type", "v", "ts", "source", "corr", "payload"}
    assert raw["type"] == "OrderRequest" and raw["payload"]["side"] == "buy"


def test_malformed_bytes_name_the_message():
    with pytest.raises(EventDecodeError, match="not a JSON event") as caught:
        decode(b"{not json")
    assert caught.value.field == "<message>"


def test_missing_envelope_field_is_named():
    raw = msgspec.json.decode(encode(order_request(1)))
    del raw["corr"]
    with pytest.raises(EventDecodeError, match="corr") as caught:
        decode(msgspec.json.encode(raw))
    assert "missing required field" in caught.value.problem


@pytest.mark.parametrize(
    ("path", "value", "field", "problem"),
    [
        (("payload", "quantity"), -1.0, "payload.quantity", "> 0"),
        (("payload", "quantity"), "lots", "payload.quantity", "got `str`"),
        (("payload", "side"), "hold", "payload.side", "Invalid enum value 'hold'"),
        (("payload", "limit_price"), None, "payload", "limit_price is required"),
        (("payload", "order_type"), "market", "payload", "a market order carries none"),
        (("ts",), "2024-01-01T00:00:00", "ts", "timezone"),
        (("payload", "unexpected"), 1, "payload", "unknown field `unexpected`"),
    ],
)
def test_invalid_fields_are_named_with_the_problem(path, value, field, problem):
    raw = msgspec.json.decode(encode(order_request(1)))
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(EventDecodeError) as caught:
        decode(msgspec.json.encode(raw))
    assert caught.value.field == field
    assert problem in caught.value.problem


def test_bar_column_element_is_named_by_index():
    raw = msgspec.json.decode(encode(make_event(bar_set(5), source="md")))
    raw["payload"]["close"][3] = 0.0
    with pytest.raises(EventDecodeError) as caught:
        decode(msgspec.json.encode(raw))
    assert caught.value.field == "payload.close[3]"


def test_unknown_type_and_future_version_are_refused():
    raw = msgspec.json.decode(encode(order_request(1)))
    with pytest.raises(EventDecodeError, match="unknown event type 'Teleport'"):
        decode(msgspec.json.encode({**raw, "type": "Teleport"}))
    with pytest.raises(EventDecodeError, match="schema version 2") as caught:
        decode(msgspec.json.encode({**raw, "v": 2}))
    assert caught.value.field == "v"


def test_bar_set_rejects_ragged_columns_and_duplicate_symbols():
    with pytest.raises(ValueError, match="BarSet.close has 1 values for 2 symbols"):
        BarSet(
            bar_open=T0,
            symbols=("A", "B"),
            open=(1.0, 1.0),
            high=(1.0, 1.0),
            low=(1.0, 1.0),
            close=(1.0,),
        )
    with pytest.raises(ValueError, match=r"duplicated: \['A'\]"):
        BarSet(
            bar_open=T0,
            symbols=("A", "A"),
            open=(1.0, 1.0),
            high=(1.0, 1.0),
            low=(1.0, 1.0),
            close=(1.0, 1.0),
        )


def test_factor_snapshot_rejects_a_short_column():
    with pytest.raises(ValueError, match=r"exposures\[1\] \(g\) has 1 values for 2 symbols"):
        FactorSnapshot(
            asof=T0, symbols=("A", "B"), factor_names=("f", "g"), exposures=((1.0, 2.0), (1.0,))
        )


def test_events_are_immutable():
    event = order_request(1)
    with pytest.raises(AttributeError):
        event.payload.quantity = 5.0  # type: ignore[misc]


def test_make_event_refuses_naive_time_and_defaults_corr_to_own_id():
    with pytest.raises(ValueError, match="timezone-aware"):
        make_event(Control(command="halt"), source="cli", ts=datetime(2024, 1, 1))
    event = make_event(Control(command="resume"), source="cli")
    assert event.corr == event.id and event.ts.tzinfo == UTC


def test_terminal_statuses():
    assert OrderUpdate(client_order_id="x", status="filled").is_terminal
    assert not OrderUpdate(client_order_id="x", status="accepted").is_terminal


def test_a_bar_block_keeps_missing_bars_as_nan_and_stands_for_its_bar_sets():
    block = bar_block((1.0, NAN, 1.5, 2.5, NAN, NAN))
    assert block.open is block.close  # one matrix given for four columns is stored once
    decoded = decode(encode(make_event(block, source="market-data"))).payload
    assert isinstance(decoded, BarBlock) and decoded == block
    assert str(decoded.matrix("close").tolist()) == "[[1.0, nan], [1.5, 2.5], [nan, nan]]"
    rows = decoded.rows()  # the third bar time has no bar: no BarSet, as a feed sends none
    assert [(r.bar_open, r.symbols, r.close, r.volume) for r in rows] == [
        (T0, ("A",), (1.0,), (0.0,)),
        (T0 + DAY, ("A", "B"), (1.5, 2.5), (0.0, 0.0)),
    ]
    assert decoded.last_row() == rows[-1] and block.last_row() == rows[-1]
    assert decoded.close_time == T0 + 3 * DAY


def test_a_bar_block_with_a_bad_price_is_refused_naming_the_bar_and_symbol():
    wire = msgspec.json.decode(encode(make_event(bar_block((1.0,) * 6), source="md")))
    bad = np.ones(6)
    bad[3] = -2.5  # bar 1, symbol B
    wire["payload"]["close"] = base64.b64encode(bad.tobytes()).decode()
    with pytest.raises(EventDecodeError) as caught:
        decode(msgspec.json.encode(wire))
    assert caught.value.field.startswith("payload")
    assert "close must be positive" in str(caught.value) and "-2.5 at bar 1" in str(caught.value)
    assert "symbol B" in str(caught.value)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(close=b"\0" * 40), r"close has 5 values for 3 bars x 2 symbols"),
        (dict(bar_open=(T0, T0, T0 + DAY)), "strictly increasing"),
        (dict(bar_open=(), open=b"", high=b"", low=b"", close=b"", volume=b""), "at least one bar"),
        (dict(symbols=("A", "A")), r"duplicated: \['A'\]"),
        (dict(volume=np.array([1.0, -1.0, 0, 0, 0, 0]).tobytes()), "volume must be non-negative"),
        (
            dict(high=np.array([1.0, np.inf, 1, 1, 1, 1]).tobytes()),
            "high must be positive and finite",
        ),
    ],
)
def test_a_malformed_bar_block_is_refused(change, message):
    fields = {name: getattr(bar_block((1.0,) * 6), name) for name in BarBlock.__struct_fields__}
    with pytest.raises(ValueError, match=message):
        BarBlock(**{**fields, **change})


def test_portfolio_marks_stand_for_one_snapshot_per_bar_and_refuse_ragged_columns():
    marks = portfolio_marks()
    rows = marks.rows()
    assert [(r.asof, r.equity, r.prices, r.positions, r.cash, r.fills_applied) for r in rows] == [
        (T0, 1000.0, {"A": 10.5}, {"A": 2.0}, 979.0, 1),
        (T0 + DAY, 1010.0, {"A": 15.5}, {"A": 2.0}, 979.0, 1),
    ]
    fields = {name: getattr(marks, name) for name in PortfolioMarks.__struct_fields__}
    with pytest.raises(ValueError, match=r"equity has 1 values for 2 bars"):
        PortfolioMarks(**{**fields, "equity": (1.0,)})
    with pytest.raises(ValueError, match="exactly the symbols of positions"):
        PortfolioMarks(**{**fields, "prices": {}})
