"""One active instance of a stateful service per account; any other is a hot standby.

A stateful service (factor-update, rebalance, execution, recorder) keeps one state snapshot
per consumer group, so two instances consuming at once would each hold half the account.
Instead, an instance must hold the service's lock in Redis (``keys.service_lock``: redis-py's
``Lock``, a random token with an expiry) before it restores its state or reads a message.
A second instance started with the same config waits for the lock: a hot standby, already
imported and connected. The holder renews the lock every third of its time to live; when it
dies, the lock expires and the standby takes over within ``ttl_s`` (at once after a clean
stop, which releases it).

The token fences the holder's writes: a guarded bus (``RedisBus.guard_lease``) commits only
while the lock still holds its token, in the same WATCHed transaction as the data guard. An
instance that stalled past its expiry (a long pause, a network partition) and woke up after a
standby took over cannot commit anything: its next write raises ``LeaseLostError``, and it
exits to become a standby in turn. No work is lost (the messages it held stay pending, and the
new holder adopts them, ``RedisConsumer.adopt_pending``) and none is doubled (what it could not
commit, it did not do).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import uuid

import redis
import structlog
from redis.exceptions import LockError, LockNotOwnedError

from engine.bus import keys
from engine.bus.redis_streams import LeaseLostError, RedisBus

log = structlog.get_logger("engine.bus")

__all__ = ["LeaseLostError", "ServiceLease"]

_TOKEN = re.compile(r"^(?P<who>.*) pid (?P<pid>\d+) on (?P<host>\S+) #")
_DELETE_IF_EQUAL = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


class ServiceLease:
    """The lock of one stateful service of an account, held by this process (module
    docstring). ``lost`` is set when a renewal finds the lock taken over."""

    def __init__(
        self,
        bus: RedisBus,
        service: str,
        holder: str,
        ttl_s: float,
        stop_when_lost: threading.Event | None = None,
    ) -> None:
        self.bus = bus
        self.service = service
        self.key = keys.service_lock(bus.namespace, service)
        self.ttl_s = ttl_s
        # Readable by whoever waits: which process holds it, and a random part for fencing.
        self.token = f"{holder} pid {os.getpid()} on {socket.gethostname()} #{uuid.uuid4().hex}"
        self._lock = bus.redis.lock(self.key, timeout=ttl_s, thread_local=False)
        self.lost = threading.Event()
        # Set too when the lease is lost: the process's stop, so it stops consuming at once.
        self._stop_when_lost = stop_when_lost
        self._done = threading.Event()
        self._renewer: threading.Thread | None = None

    def holder(self) -> str | None:
        """The token of the instance holding the lock now, if any."""
        raw = self.bus.call("get", lambda: self.bus.redis.get(self.key))
        return None if raw is None else raw.decode(errors="replace").split(" #")[0]

    def _clear_dead_holder(self) -> None:
        """Delete the lock if its holder is a process of this host that no longer exists (a
        restart after a kill -9 then takes over at once instead of after ``ttl_s``). Only a
        dead pid of this very host is cleared, by compare-and-delete on its exact token."""
        raw = self.bus.call("get", lambda: self.bus.redis.get(self.key))
        if raw is None:
            return
        match = _TOKEN.match(raw.decode(errors="replace"))
        if match is None or match["host"] != socket.gethostname():
            return
        try:
            os.kill(int(match["pid"]), 0)
        except ProcessLookupError:
            pass  # gone
        except PermissionError:
            return  # alive, someone else's
        else:
            return
        cleared = self.bus.call(
            "lock_clear", lambda: self.bus.redis.eval(_DELETE_IF_EQUAL, 1, self.key, raw)
        )
        if cleared:
            log.info("service.lease_cleared", service=self.service, dead_holder=match["who"])

    def try_acquire(self) -> bool:
        """One attempt: take the lock if it is free. Once held, the bus fences this
        instance's writes with the token and a thread renews it."""
        self._clear_dead_holder()
        taken = self.bus.call(
            "lock_acquire", lambda: self._lock.acquire(blocking=False, token=self.token)
        )
        if taken:
            self.bus.guard_lease(self.key, self.token)
            self._renewer = threading.Thread(
                target=self._renew, name=f"lease-{self.service}", daemon=True
            )
            self._renewer.start()
            log.info("service.lease_acquired", service=self.service, key=self.key, ttl_s=self.ttl_s)
        return bool(taken)

    def acquire(self, stop: threading.Event) -> bool:
        """Wait as a standby until this instance holds the lock (True), or until ``stop`` is
        set (False)."""
        announced = False
        while not stop.is_set():
            if self.try_acquire():
                return True
            if not announced:
                log.info(
                    "service.standby",
                    service=self.service,
                    active=self.holder(),
                    ttl_s=self.ttl_s,
                )
                announced = True
            stop.wait(min(0.5, self.ttl_s / 4))
        return False

    def _renew(self) -> None:
        while not self._done.wait(self.ttl_s / 3):
            try:
                self._lock.reacquire()
            except LockNotOwnedError:
                self.lost.set()
                if self._stop_when_lost is not None:
                    self._stop_when_lost.set()
                log.error(
                    "service.lease_lost",
                    service=self.service,
                    key=self.key,
                    reason="the lock expired and another instance took it",
                )
                return
            except (redis.RedisError, OSError) as error:
                # Fencing keeps this safe: should the lock expire meanwhile, no write of this
                # instance commits; the next renewal tells whether it is still ours.
                log.warning("service.lease_renew_failed", service=self.service, error=str(error))

    def release(self) -> None:
        """Stop renewing and hand the lock over at once (a clean stop)."""
        self._done.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        if not self.lost.is_set():
            with contextlib.suppress(LockError, redis.RedisError, OSError):
                self._lock.release()
