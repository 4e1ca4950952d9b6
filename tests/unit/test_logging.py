"""Log lines are events with fields, carry service/event/corr, and never leak a secret."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from engine.logging import (
    REDACTED,
    SecretFilter,
    configure_logging,
    forget_secrets,
    get_logger,
    redact_secrets,
    register_secret,
)


@pytest.fixture
def json_lines():
    stream = io.StringIO()
    configure_logging("signal", level="info", format="json", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    structlog.reset_defaults()


def test_every_line_carries_service_event_and_corr(json_lines):
    log = get_logger()
    log.info("rebalance.done", n_orders=7, turnover=0.12)
    with structlog.contextvars.bound_contextvars(corr="rb-2024-01"):
        log.warning("risk.var_breach", var_99=0.06)
    first, second = json_lines()
    assert first["service"] == "signal" and first["event"] == "rebalance.done"
    assert first["corr"] is None and first["n_orders"] == 7
    assert second["corr"] == "rb-2024-01" and second["level"] == "warning"
    assert "timestamp" in second


def test_level_filters_lower_lines(json_lines):
    get_logger().debug("noise")
    assert json_lines() == []


def test_secrets_are_redacted_in_rendered_output(json_lines):
    get_logger().info(
        "broker.connect",
        api_key="AKIA123",
        exchange_secret="s3cr3t",
        password="pw",
        url="redis://user:hunter2@redis.internal:6379/0",
        detail="login failed for token=abc123; retry",
        headers={"Authorization": "Bearer xyz", "Accept": "json"},
    )
    (line,) = json_lines()
    text = json.dumps(line)
    for secret in ("AKIA123", "s3cr3t", "hunter2", "abc123", "Bearer xyz"):
        assert secret not in text
    assert line["api_key"] == REDACTED and line["password"] == REDACTED
    assert line["url"] == f"redis://user:{REDACTED}@redis.internal:6379/0"
    assert line["detail"] == f"login failed for token={REDACTED}; retry"
    assert line["headers"] == {"Authorization": REDACTED, "Accept": "json"}


def test_redaction_keeps_harmless_fields():
    event = {
        "event": "bus.connected",
        "url": "redis://127.0.0.1:6379/0",
        "keys": 3,
        "monkey": "banana",
        "token_count": None,
    }
    assert redact_secrets(None, "info", dict(event)) == event


def test_console_format_is_readable_text():
    stream = io.StringIO()
    configure_logging("market-data", format="console", stream=stream)
    get_logger().info("data.gap", symbol="BTC/USDT")
    structlog.reset_defaults()
    output = stream.getvalue()
    assert "data.gap" in output and "symbol=BTC/USDT" in output and not output.startswith("{")


def test_registered_secrets_are_masked_in_any_field_and_inside_text(json_lines):
    register_secret("AKIAregistered123")
    register_secret("abc")  # too short to mask: it would blank innocent text
    try:
        get_logger().error(
            "broker.down",
            detail="sent header X-MBX-APIKEY: AKIAregistered123 to the exchange",
            nested={"calls": [("GET", "key=AKIAregistered123")]},
            error=RuntimeError("request failed with AKIAregistered123"),
            label="abc",
        )
    finally:
        forget_secrets()
    (line,) = json_lines()
    assert "AKIAregistered123" not in json.dumps(line)
    assert line["detail"] == f"sent header X-MBX-APIKEY: {REDACTED} to the exchange"
    assert line["error"] == f"request failed with {REDACTED}" and line["label"] == "abc"


def test_secret_filter_masks_registered_secrets_in_stdlib_records():
    register_secret("s3cr3t-library-value")
    stream = io.StringIO()
    logger = logging.getLogger("tests.secret_filter")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.addFilter(SecretFilter())
    try:
        logger.warning("headers: %s", {"X-MBX-APIKEY": "s3cr3t-library-value"})
    finally:
        logger.removeHandler(handler)
        forget_secrets()
    assert stream.getvalue() == f"headers: {{'X-MBX-APIKEY': '{REDACTED}'}}\n"
