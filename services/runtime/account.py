"""A paper account: the identity that outlives the processes trading it.

``RUN_DIR/account.json`` names the account's Redis namespace, the feed it trades and how many
times it was started. A run on a directory that holds an account continues it (same namespace:
same streams, same service state, same ledger); ``--fresh`` opens a new account and deletes the
old one's keys. The file is replaced atomically (write, fsync, rename), so a run killed while
writing it leaves the old version or the new one, never half of one.

A run may continue an account only on the same feed: a different file or exchange would splice
two histories into one equity curve, so it is refused with a message that offers ``--fresh``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from engine.bus import RedisBus, keys
from engine.bus.redis_streams import RedisDataLostError, redact_url
from engine.errors import UsageError

log = structlog.get_logger("services.runtime.account")
ACCOUNT_FILE = "account.json"


@dataclass(frozen=True)
class PaperAccount:
    """One start of a paper account.

    Attributes
    ----------
    namespace
        Redis key prefix of every stream, group and state of the account.
    feed
        What the account trades on, e.g. ``replay:path/to/file.csv`` or ``live:binance:1m:...``.
    starts
        How many runs have started on the account, this one included.
    created
        When the account was opened (ISO UTC).
    retired_namespace
        With ``--fresh`` on an existing account: the old namespace, whose keys the run deletes
        once it is connected to Redis.
    marked
        Whether a run of the account has written its marker key in Redis (``bind_account``);
        from then on the marker must be there.
    """

    namespace: str
    feed: str
    starts: int
    created: str
    retired_namespace: str | None = None
    marked: bool = False

    @property
    def restarts(self) -> int:
        """How many times the account was started again after its first run."""
        return self.starts - 1

    @property
    def resumed(self) -> bool:
        return self.starts > 1


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _read(path: Path, option: str) -> dict | None:
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        str(record["namespace"]), str(record["feed"]), int(record["starts"])
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(
            f"{option} {path.parent}: {path.name} is unreadable ({error}); "
            "restore it, or start over with --fresh"
        ) from None
    return record


def account_namespace(run_dir: Path) -> str:
    """The Redis namespace of the paper account in ``run_dir``.

    Raises
    ------
    UsageError
        No account there (naming the directory), or its account.json is unreadable.
    """
    record = _read(run_dir / ACCOUNT_FILE, "--out")
    if record is None:
        raise UsageError(
            f"--out {run_dir}: no paper account here (no {ACCOUNT_FILE}); start one with "
            "`deepfactor paper --out DIR` or `deepfactor run market-data --out DIR`"
        )
    return str(record["namespace"])


def open_account(
    run_dir: Path,
    base_namespace: str,
    feed: str,
    *,
    fresh: bool = False,
    option: str = "--out",
    now: datetime | None = None,
) -> PaperAccount:
    """Continue the account in ``run_dir``, or open one there (``fresh`` replaces it).

    Must be called by the run that holds the directory's lock.

    Raises
    ------
    UsageError
        The directory's account trades another feed, or its account file is unreadable; the
        message names both feeds and offers ``--fresh``.
    """
    path = run_dir / ACCOUNT_FILE
    now = now or datetime.now(UTC)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = None if fresh and not path.exists() else _read(path, option)
    if record is not None and not fresh:
        if record["feed"] != feed:
            raise UsageError(
                f"{option} {run_dir}: holds a paper account trading {record['feed']}; this run "
                f"trades {feed}. Run with the same feed to continue it, or with --fresh to "
                "start a new account there"
            )
        account = PaperAccount(
            namespace=record["namespace"],
            feed=feed,
            starts=int(record["starts"]) + 1,
            created=record.get("created", ""),
            marked=bool(record.get("marked", False)),
        )
        log.info(
            "paper.account_resumed",
            namespace=account.namespace,
            restarts=account.restarts,
            feed=feed,
        )
    else:
        account = PaperAccount(
            namespace=f"{base_namespace}-{now:%Y%m%dT%H%M%S%fZ}",
            feed=feed,
            starts=1,
            created=now.isoformat(),
            retired_namespace=None if record is None else record["namespace"],
        )
        log.info(
            "paper.account_opened",
            namespace=account.namespace,
            feed=feed,
            replaces=account.retired_namespace,
        )
    record = {
        "namespace": account.namespace,
        "feed": account.feed,
        "starts": account.starts,
        "created": account.created,
        "last_start": now.isoformat(),
    }
    if account.marked:
        record["marked"] = True
    _write_atomically(path, json.dumps(record, indent=2) + "\n")
    return account


def bind_account(
    bus: RedisBus, account: PaperAccount, run_dir: Path, option: str = "--out"
) -> None:
    """Mark the account's namespace in Redis, or check the mark, then guard the run with it.

    The first run that reaches Redis writes ``{namespace}:account`` (the account's creation
    time) and records ``"marked": true`` in account.json. A continued, marked account must
    find it: account.json saying the account exists while Redis has no mark of it means the
    Redis data was lost (restarted without persistence, flushed), and continuing would trade a
    reset account as if it were the old one. An account not marked yet (opened before marks
    existed, or whose earlier runs never reached Redis) gets its mark now. From here on the
    bus treats the mark's disappearance as lost data (``RedisBus.guard_data``).

    Raises
    ------
    RedisDataLostError
        A continued account whose data is gone; the message offers ``--fresh``.
    """
    marker = keys.account(account.namespace)
    stamp = account.created or datetime.now(UTC).isoformat()
    if account.marked and not bus.call("exists_account", lambda: bus.redis.exists(marker)):
        log.error(
            "paper.redis_data_lost",
            namespace=account.namespace,
            url=redact_url(bus.url),
            marker=marker,
        )
        raise RedisDataLostError(
            f"{option} {run_dir}: account.json says paper account {account.namespace} exists, "
            f"but Redis at {redact_url(bus.url)} has no key {marker}: the Redis data was lost "
            "(restarted without persistence, or flushed). Start a new account there with --fresh"
        )
    if not account.marked:
        bus.call("set_account", lambda: bus.redis.set(marker, stamp, nx=True))
        path = run_dir / ACCOUNT_FILE
        record = json.loads(path.read_text())
        record["marked"] = True
        _write_atomically(path, json.dumps(record, indent=2) + "\n")
        log.info("paper.account_marked", namespace=account.namespace, marker=marker)
    bus.guard_data(marker)


def delete_namespace(bus: RedisBus, namespace: str) -> None:
    """Delete every key of ``namespace``: with --fresh, the replaced account's streams must not
    linger in the append-only file."""
    pattern = keys.namespace_pattern(namespace)
    found = list(bus.call("scan", lambda: list(bus.redis.scan_iter(match=pattern, count=1000))))
    for start in range(0, len(found), 1000):
        chunk = found[start : start + 1000]
        bus.call("delete", lambda chunk=chunk: bus.redis.delete(*chunk))
    log.info("paper.account_deleted", namespace=namespace, keys=len(found))
