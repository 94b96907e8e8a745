"""One setting of `keyscope serve`, declared once, and the checks simple enough to be declared with it.

Each `Settings` field carries an `Option` (made by `option()`): from it come the flag `--<name-with-dashes>`,
the environment variable `KEYSCOPE_<NAME>`, the YAML key (`<name>`, dashes accepted), the flag's line of
`--help` and its row of the README's options table (tests/test_settings.py holds the README to it), so that
adding a setting is adding one field. A check looks at one setting's value alone; checks between settings (two
listeners on one port) are `settings.validate`'s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from keyscope.core.networks import parse_network


class ConfigError(ValueError):
    """A setting is unusable; the message is the one line `keyscope serve` prints."""


class ProblemsError(ConfigError):
    """Several problems at once (a broken endpoints.yaml): `keyscope serve` prints one line per problem."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = tuple(lines)


Check = Callable[[str, Any], Any]
"""`check(name, value)` with the name as the messages spell it (`max-body-size`): the value to keep, normalised
(`upstream` without its trailing slash), or ConfigError. Never called with None, which means "not set"."""


@dataclass(frozen=True, slots=True)
class Option:
    """What a setting declares beside its name, type and default (which are its dataclass field's)."""

    help: str
    """Markdown: the README's "what", and without the backquotes the flag's `--help`."""
    metavar: str | None = None
    shown: str | None = None
    """The default as the README and `--help` show it, where the value itself would say it badly (`1 MiB`)."""
    check: Check | None = None
    name: str = ""
    kind: str = ""
    """The field's annotation as written (`float | None`): what a string from the environment becomes."""
    default: Any = None

    @property
    def dashed(self) -> str:
        return self.name.replace("_", "-")

    @property
    def flag(self) -> str:
        return "--" + self.dashed

    @property
    def env(self) -> str:
        return "KEYSCOPE_" + self.name.upper()

    @property
    def shown_default(self) -> str:
        if self.shown is not None:
            return self.shown
        if self.default is None or self.default == ():
            return "none"
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if isinstance(self.default, str):
            return f"`{self.default}`"
        if isinstance(self.default, float) and self.default.is_integer():
            return str(int(self.default))
        return str(self.default)


def option(default: Any, help: str, *, metavar: str | None = None, shown: str | None = None,
           check: Check | None = None) -> Any:
    """A `Settings` field and its declaration (kept in the field's metadata, read back by `declared()`)."""
    return dataclasses.field(default=default, metadata={"option": Option(help, metavar, shown, check)})


def declared(cls: type) -> tuple[Option, ...]:
    """The options of a dataclass made with `option()`, in field order, each completed with its field's name,
    annotation and default."""
    return tuple(
        dataclasses.replace(field.metadata["option"], name=field.name, kind=str(field.type), default=field.default)
        for field in dataclasses.fields(cls)
    )


# checks ------------------------------------------------------------------------------------------------------
def port_number(name: str, value: int) -> int:
    if not 0 <= value <= 65535:
        raise ConfigError(f"{name} {value} is out of range")
    return value


def at_least_one(name: str, value: int) -> int:
    if value < 1:
        raise ConfigError(f"{name} must be at least 1")
    return value


def not_negative(name: str, value: float) -> float:
    if value < 0:
        raise ConfigError(f"{name} must not be negative")
    return value


def positive_seconds(name: str, value: float) -> float:
    if not value > 0:  # NaN too
        raise ConfigError(f"{name} must be a positive number of seconds")
    return value


def finite_positive_seconds(name: str, value: float) -> float:
    """A deadline that must come: `inf` would mean never."""
    if not 0 < value < math.inf:
        raise ConfigError(f"{name} must be a positive number of seconds")
    return value


def finite_seconds(name: str, value: float) -> float:
    if not 0 <= value < math.inf:
        raise ConfigError(f"{name} must be a number of seconds, 0 or more")
    return value


def not_empty(name: str, value: str) -> str:
    if not value:
        raise ConfigError(f"{name} must not be empty")
    return value


def header_value(name: str, value: str) -> str:
    """Sent as a header as it is: a line break would start a header of the client's choosing."""
    if any(c in value for c in "\r\n\0"):
        raise ConfigError(f"{name} must be a single header value")
    return value


def networks(name: str, value: tuple[str, ...]) -> tuple[str, ...]:
    for text in value:
        try:
            parse_network(text)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return value


def listen(name: str, value: str) -> str:
    listen_address(value)
    return value


def one_of(*choices: str) -> Check:
    """One of `choices`, in any case and with spaces around."""

    def check(name: str, value: str) -> str:
        if value.strip().lower() not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        return value.strip().lower()

    return check


def upstream_url(name: str, value: str) -> str:
    if not value:
        raise ConfigError("no upstream: give --upstream http://HOST:PORT[/base] (or KEYSCOPE_UPSTREAM)")
    return upstream_base(value)


def listen_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT` or just `PORT` (loopback): the form of `--admin-listen` and `--status-listen`,
    parsed here (and not where the socket is opened, keyscope.serve.sockets) because start-up checks it."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        host = "127.0.0.1"
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"listen address {text!r} must be HOST:PORT") from None
    if not host or not 0 <= port <= 65535:
        raise ConfigError(f"listen address {text!r} must be HOST:PORT with a port up to 65535")
    return host, port


def upstream_base(url: str) -> str:
    """`http://host:port[/base]` without a trailing slash; the raw request path is appended to it as is."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"upstream {url!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"upstream {url!r} must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ConfigError(f"upstream {url!r} must not have a query or fragment")
    if parts.username or parts.password:
        raise ConfigError(f"upstream {url!r} must not carry credentials: use --upstream-authorization")
    if port == 0:
        raise ConfigError(f"upstream {url!r} has port 0")
    return url.rstrip("/")
