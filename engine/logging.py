"""structlog set-up: JSON lines for daemons, readable console output in a terminal.

Every line carries ``service``, ``event`` and ``corr``; one processor redacts anything that looks
like a key, secret or password before a renderer sees it, so no code path can leak one. Values
known to be secret (an exchange's API key and secret, read from the environment) are
registered with ``register_secret`` and masked wherever they appear, under any field name and
inside any text, in structlog lines and, through ``SecretFilter``, in a library's stdlib logging.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal, TextIO

import structlog

REDACTED = "***"
# Registered secret values are masked only from this length on: a very short value (a test's
# "x") would mask innocent text everywhere and protects nothing.
MIN_SECRET_LENGTH = 6
_registered_secrets: set[str] = set()
_SECRET_KEY = re.compile(
    r"(pass(word|wd|phrase)?|secret|token|api[_-]?key|apikey|private[_-]?key|credential|"
    r"signature|auth(orization)?|cookie)$|^(key|pwd)$",
    re.IGNORECASE,
)
# scheme://user:password@host -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]+)@")
# password=..., api_key: ..., "secret": "..." inside free text
_INLINE_SECRET = re.compile(
    r"(?P<head>\b(pass(word|wd)?|secret|token|api[_-]?key|apikey|private[_-]?key)\b['\"]?\s*[=:]\s*['\"]?)"
    r"(?P<secret>[^\s'\",;&]+)",
    re.IGNORECASE,
)


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it appears in a log line from now on (in any field, inside any
    text); values shorter than ``MIN_SECRET_LENGTH`` are ignored."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        _registered_secrets.add(value)


def forget_secrets() -> None:
    """Stop masking the registered values (tests that register throwaway keys)."""
    _registered_secrets.clear()


def mask_secrets(text: str) -> str:
    """Return ``text`` with every registered secret value replaced by ``REDACTED``: for text
    that leaves the process other than through a log line (an error message, a reason)."""
    # Longest first, so a secret that contains another is masked whole.
    for secret in sorted(_registered_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _redact_text(text: str) -> str:
    text = mask_secrets(text)
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}@", text)
    return _INLINE_SECRET.sub(lambda m: f"{m['head']}{REDACTED}", text)


def _redact_value(key: str | None, value: Any) -> Any:
    if key is not None and _SECRET_KEY.search(key) and value not in (None, ""):
        return REDACTED
    if isinstance(value, str):
        return _redact_text(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(None, v) for v in value)
    if _registered_secrets and not isinstance(value, (int, float, bool)) and value is not None:
        # An object rendered later by str() (an exception, a request): render it now if that
        # text holds a registered secret, so the renderer never sees the value.
        text = str(value)
        masked = mask_secrets(text)
        if masked != text:
            return masked
    return value


def redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask values under secret-looking keys and passwords inside URLs or free text."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _redact_value(key, value)
    return event_dict


class SecretFilter(logging.Filter):
    """A stdlib logging filter that masks registered secrets in a record's message: for a
    library that logs through ``logging`` (ccxt logs request headers, the API key among them,
    at debug level). Attach it to the logger the library logs to."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _registered_secrets:
            message = record.getMessage()
            masked = mask_secrets(message)
            if masked != message:
                record.msg, record.args = masked, None
        return True


def _require_fields(service: str) -> structlog.types.Processor:
    def add_fields(
        logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event_dict.setdefault("service", service)
        event_dict.setdefault("corr", None)
        return event_dict

    return add_fields


def configure_logging(
    service: str,
    level: str = "info",
    format: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
) -> None:
    """Route structlog to ``stream`` (stderr by default) for the process named ``service``."""
    stream = stream or sys.stderr
    if format == "auto":
        format = "console" if stream.isatty() else "json"
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if format == "console"
        else structlog.processors.JSONRenderer(default=str)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _require_fields(service),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None) -> Any:
    """Return a structlog logger; ``name`` becomes the ``logger`` field when given."""
    return structlog.get_logger(name) if name else structlog.get_logger()
