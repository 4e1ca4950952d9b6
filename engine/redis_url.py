"""Redis URLs as this project reads them, parsed without touching a network: the
``redis+sentinel://`` form ``engine.bus.connect`` connects through, and the config loader
checks at start-up.

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/PRIMARY_NAME[/DB]
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelAddress:
    """Where a Sentinel-managed primary is found, parsed from a ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    primary: str
    db: int
    username: str | None
    password: str | None
    tls: bool


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelAddress:
    """Parse ``url``; raise ``ValueError`` saying which part is missing or malformed (never
    quoting the password)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError(f"scheme {scheme!r} is not one of {list(SENTINEL_SCHEMES)}")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    sentinels = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        if not host:
            raise ValueError(f"sentinel address {item.strip()!r} has no host")
        try:
            number = int(port) if port else SENTINEL_PORT
        except ValueError:
            raise ValueError(f"sentinel address {item.strip()!r}: port is not a number") from None
        if not 0 < number < 65536:
            raise ValueError(f"sentinel address {item.strip()!r}: port out of range")
        sentinels.append((host.strip("[]"), number))
    parts = [p for p in urlsplit("x://h/" + path).path.split("/") if p]
    if not parts:
        raise ValueError("no primary name: expected .../PRIMARY_NAME[/DB] after the sentinels")
    if len(parts) > 2:
        raise ValueError(f"path {'/'.join(parts)!r}: expected PRIMARY_NAME[/DB]")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ValueError(f"database {parts[1]!r} is not a number")
        db = int(parts[1])
    return SentinelAddress(
        sentinels=tuple(sentinels),
        primary=unquote(parts[0]),
        db=db,
        username=username,
        password=password,
        tls=scheme.lower() == "rediss+sentinel",
    )
