"""Shared fixtures: a real Redis for integration tests and a fresh namespace per test.

The server is ``REDIS_URL`` if set, else 127.0.0.1:6379 (database 9) if it answers, else a
private redis-server this fixture starts under a temporary directory, so the suite passes on
a machine with no Redis at all. ``DEEPFACTOR_TEST_REDIS=private`` forces the private server
(CI runs the bus suites that way too).

``tests/skip_policy.py`` makes CI (``DEEPFACTOR_FORBID_SKIPS=1``) fail on a skip for anything
but missing hardware or network.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import structlog

from engine.bus import EmbeddedRedis
from engine.bus.keys import namespace_pattern

LOCAL_REDIS = "redis://127.0.0.1:6379/9"
pytest_plugins = ["tests.skip_policy"]


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis server for this test session."""
    configured = os.environ.get("REDIS_URL")
    force_private = os.environ.get("DEEPFACTOR_TEST_REDIS") == "private"
    if configured and not force_private:
        yield configured
        return
    if not force_private and _answers(LOCAL_REDIS):
        yield LOCAL_REDIS
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def delete_namespace(url: str, namespace: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=namespace_pattern(namespace), count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def delete_namespaces(url: str, prefix: str) -> None:
    """Delete every namespace ``{prefix}-*`` (the accounts a run opened under a test prefix)."""
    client = redis.Redis.from_url(url)
    try:
        names = {key.decode().split(":")[0] for key in client.scan_iter(match=f"{prefix}-*")}
    finally:
        client.close()
    for name in names:
        delete_namespace(url, name)


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A namespace no other test uses; its keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    delete_namespace(redis_url, name)


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Undo a command's logging set-up after each test: a command run in-process binds
    structlog to the test's captured stderr, which is closed once the test ends."""
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory, for unix sockets (sun_path is ~100 bytes)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="df-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
