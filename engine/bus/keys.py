"""Every Redis key deepfactor uses, built in one place so no call site spells one by hand."""

from __future__ import annotations


def stream(namespace: str, topic: str) -> str:
    """Stream of one topic."""
    return f"{namespace}:{topic}"


def dead_letter(namespace: str) -> str:
    """Stream of messages taken out of circulation, with reasons; never trimmed."""
    return f"{namespace}:deadletter"


def processed(namespace: str, group: str) -> str:
    """Sorted set of event ids a group has applied (score: when), for idempotency."""
    return f"{namespace}:processed:{group}"


def state(namespace: str, group: str) -> str:
    """Snapshot of a stateful service's state (opaque bytes), written in the same MULTI as the
    acknowledgement of the message that produced it, read once when the service starts."""
    return f"{namespace}:state:{group}"


def namespace_pattern(namespace: str) -> str:
    """Glob matching every key of a namespace (tests clean up with it)."""
    return f"{namespace}:*"


def scheduler_lock(namespace: str, schedule: str) -> str:
    """Lock (a token with an expiry) held by the one scheduler that fires ``schedule``."""
    return f"{namespace}:lock:scheduler:{schedule}"


def account(namespace: str) -> str:
    """Marker of a paper account (its creation time), written when its namespace is first
    used: gone while the account exists means the Redis data was lost."""
    return f"{namespace}:account"


def kill_switch(namespace: str) -> str:
    """The operator's halt of an account (JSON: since, reason, flatten), set by ``deepfactor
    halt`` and deleted by ``deepfactor resume`` in the same MULTI as their Control event."""
    return f"{namespace}:kill_switch"


def service_lock(namespace: str, service: str) -> str:
    """Lock (a token with an expiry) held by the one active instance of a stateful service;
    its token fences that instance's writes (``RedisBus.guard_lease``)."""
    return f"{namespace}:lock:service:{service}"
