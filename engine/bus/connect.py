"""From a Redis URL to a client: ``redis://``, ``rediss://`` (TLS) and ``unix://`` through
redis-py's ``from_url``, and ``redis+sentinel://`` / ``rediss+sentinel://`` through redis-py's
``Sentinel``, whose client asks the sentinels for the current primary on every new connection,
so the bus's reconnect-and-retry follows a failover without knowing about it.

A Sentinel URL names the sentinels, the monitored primary's name and the database::

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/PRIMARY_NAME[/DB]

The password (from the environment only, like any Redis password here) is the primary's; the
sentinels are asked without one. ``rediss+sentinel`` speaks TLS to the primary.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.sentinel import Sentinel

from engine.redis_url import is_sentinel_url, parse_sentinel_url

# What a sentinel is asked with: the timeouts of the data connections, nothing else.
_SENTINEL_OPTIONS = ("socket_connect_timeout", "socket_timeout")


def redis_client(url: str, **options: Any) -> redis.Redis:
    """A client for ``url`` with redis-py ``options`` (timeouts, retry, health checks)."""
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    address = parse_sentinel_url(url)
    sentinel = Sentinel(
        list(address.sentinels),
        sentinel_kwargs={k: options[k] for k in _SENTINEL_OPTIONS if k in options},
    )
    return sentinel.master_for(
        address.primary,
        db=address.db,
        username=address.username,
        password=address.password,
        ssl=address.tls,
        **options,
    )
