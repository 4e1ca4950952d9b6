"""The operator's levers on a paper account: the kill switch (``deepfactor halt [--flatten]``,
``deepfactor resume``) and a look at its risk (``deepfactor status``).

They reach the account of a run directory (its namespace from ``account.json``) while its
daemons run: on the configured URL, or on the run directory's private server, found on its
socket. When no run serves that server, ``halt`` and ``resume`` start it for the command and
stop it after (a halt set on a stopped account holds when it restarts); ``status`` does not.
The Control event and the persisted flag are written in one MULTI: the flag that status shows
is never out of step with what the services were told.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import redis
import structlog

from engine.bus import keys
from engine.bus.embedded import EmbeddedRedis
from engine.bus.factory import open_redis_bus
from engine.bus.redis_streams import RedisBus
from engine.config import Config
from engine.errors import UsageError
from engine.events import Control, PortfolioSnapshot, make_event
from engine.events.codec import decode
from services.runtime.account import account_namespace

log = structlog.get_logger("services.commands.operator")


@contextlib.contextmanager
def account_bus(config: Config, out_dir: Path, start_server: bool) -> Iterator[RedisBus]:
    """Yield a bus on the paper account of ``out_dir`` (its namespace from account.json).

    With no Redis URL, the run directory's private server is used if a run serves it; if none
    does, ``start_server`` starts it for the command (a halt set on a stopped account) or
    the command fails (``status`` only reads; it must never hold the directory's server
    while a run is starting).

    Raises
    ------
    UsageError
        No account in ``out_dir``, no server to read (``start_server`` False), or the
        account's data is not in Redis.
    """
    namespace = account_namespace(out_dir)
    config = msgspec.structs.replace(
        config, run=msgspec.structs.replace(config.run, namespace=namespace)
    )
    with _bus(config, out_dir, start_server) as bus:
        present = bus.call("exists", lambda: bus.redis.exists(keys.account(namespace)))
        if not present:
            raise UsageError(
                f"--out {out_dir}: paper account {namespace} has no data in Redis (its "
                "`{namespace}:account` key is missing); was it started on this Redis?"
            )
        yield bus


@contextlib.contextmanager
def _bus(config: Config, out_dir: Path, start_server: bool) -> Iterator[RedisBus]:
    if not config.bus.redis_url:
        url = EmbeddedRedis(out_dir / "redis").url
        try:
            redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2).ping()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            if not start_server:
                raise UsageError(
                    f"--out {out_dir}: no run is serving this account's Redis (its private "
                    "server is started by `deepfactor paper` and `run market-data`)"
                ) from None
        else:
            bus = RedisBus(url, config.run.namespace, give_up_after_s=config.bus.connect_timeout_s)
            try:
                yield bus
            finally:
                bus.close()
            return
    with open_redis_bus(config, out_dir) as bus:
        yield bus


def set_kill_switch(bus: RedisBus, *, halt: bool, flatten: bool, reason: str) -> dict[str, Any]:
    """Publish the operator's halt (or resume) and persist the flag with it; return the flag
    as stored (empty after a resume)."""
    now = datetime.now(UTC)
    control = Control(
        command="halt" if halt else "resume",
        flatten=flatten and halt,
        reason=reason,
        origin="operator",
    )
    event = make_event(control, source="operator", corr=f"operator-{now:%Y%m%dT%H%M%S%fZ}", ts=now)
    key = keys.kill_switch(bus.namespace)
    flag: dict[str, Any] = {}
    if halt:
        flag = {"since": now.isoformat(), "reason": reason, "flatten": flatten}
        change: tuple[Any, ...] = ("SET", key, json.dumps(flag))
    else:
        change = ("DEL", key)
    bus.transaction("kill_switch", [*bus.publish_commands(Control.TOPIC, [event]), change])
    log.warning(
        "operator.kill_switch",
        command=control.command,
        flatten=control.flatten,
        reason=reason,
        namespace=bus.namespace,
    )
    return flag


def kill_switch_of(bus: RedisBus) -> dict[str, Any] | None:
    """The account's persisted kill switch (None: trading allowed)."""
    raw = bus.call("get", lambda: bus.redis.get(keys.kill_switch(bus.namespace)))
    return None if raw is None else json.loads(raw)


def portfolio_status(bus: RedisBus) -> dict[str, Any]:
    """The account's last published risk picture: equity, drawdown, VaR and the flags."""
    status: dict[str, Any] = {"namespace": bus.namespace, "kill_switch": kill_switch_of(bus)}
    snapshot = _last_snapshot(bus)
    if snapshot is not None:
        status["portfolio"] = {
            "asof": snapshot.asof.isoformat(),
            "equity": snapshot.equity,
            "cash": snapshot.cash,
            "positions": len(snapshot.positions),
            "gross_exposure": snapshot.gross_exposure,
            "drawdown": snapshot.drawdown,
            "drawdown_stopped": snapshot.drawdown_stopped,
            "halted": snapshot.halted,
            "realised_var": snapshot.realised_var,
            "expected_var": snapshot.expected_var,
        }
    return status


def _last_snapshot(bus: RedisBus) -> PortfolioSnapshot | None:
    """The newest PortfolioSnapshot on the portfolio stream (PortfolioMarks share it)."""
    key = keys.stream(bus.namespace, PortfolioSnapshot.TOPIC)
    entries = bus.call("xrevrange", lambda: bus.redis.xrevrange(key, count=16))
    for _, fields in entries:
        event = decode(fields[b"event"])
        if isinstance(event.payload, PortfolioSnapshot):
            return event.payload
    return None
