"""The Redis URL of the shared rate-limit counters, read in one place: for the settings' check at start-up and for
the connection the limiter opens (`keyscope.decide.ratelimit.resp`).

`redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, and `rediss://` for TLS; the user and password are
percent-decoded, the port defaults to 6379 and the database to 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """Raises ValueError, saying what is wrong."""
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{url!r}: the port is not a number from 0 to 65535") from None
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"{url!r}: expected redis://HOST[:PORT][/DB] or rediss://...")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"{url!r}: the database must be a number")
        return cls(
            host=parts.hostname,
            port=port or 6379,
            db=int(path) if path else 0,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            tls=parts.scheme == "rediss",
        )


__all__ = ["RedisAddress"]
