"""`keyscope serve` settings, from flags, KEYSCOPE_* environment variables and a YAML file.

Precedence is flag > environment > file > default, per setting. Every value is validated here, so that a bad
setting stops start-up with one line naming it instead of surfacing on the first request.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from keyscope.core.limits import DEFAULT as DEFAULT_LIMITS
from keyscope.core.limits import Limits

DEFAULT_STORE = "sqlite:///keyscope.db"
DEFAULT_HEADER_TIMEOUT = 30.0
"""Seconds a connection may take to send a request head (nginx's client_header_timeout is 60)."""
DEFAULT_DRAIN_SECONDS = 5.0
"""Seconds `keyscope serve --status-listen` keeps serving after SIGTERM with readiness failing (load balancers
notice and stop sending), before it stops accepting and finishes what is in flight."""
WORKER_ENV = "KEYSCOPE_WORKER_SETTINGS"
"""How `serve --workers N` hands the validated settings to the worker processes it spawns."""


OTHER_ENV = frozenset({
    "KEYSCOPE_CONFIG",  # the YAML file (--config)
    "KEYSCOPE_URL",  # the CLI's --url and --token: a gateway to manage remotely
    "KEYSCOPE_TOKEN",
    WORKER_ENV,  # set by `serve --workers N` for its workers
    # the test suite's switches (tests/conftest.py and friends), set in CI beside a running gateway:
    "KEYSCOPE_TEST_STORES",
    "KEYSCOPE_TEST_PG",
    "KEYSCOPE_REQUIRE_BROWSER",
    "KEYSCOPE_REQUIRE_DIFFERENTIAL",
    "KEYSCOPE_SCREENSHOTS",
})
"""KEYSCOPE_* variables that are not settings but are keyscope's own; `KEYSCOPE_DIFFERENTIAL_*` too."""
OTHER_ENV_PREFIXES = ("KEYSCOPE_DIFFERENTIAL_",)


LOG_FORMATS = ("json", "text")
"""`--log-format`: of the access lines on stdout and of keyscope's and uvicorn's own lines on stderr."""
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
"""`--log-level`: uvicorn's names; it sets the level of keyscope's and uvicorn's lines on stderr."""


class ConfigError(ValueError):
    """A setting is unusable; the message is the one line `keyscope serve` prints."""


@dataclass(frozen=True, slots=True)
class Settings:
    upstream: str = ""
    endpoints: str | None = None
    store: str = DEFAULT_STORE
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    upstream_authorization: str | None = None
    upstream_timeout: float = 30.0
    upstream_connections: int = 256
    max_body_size: int = 1024 * 1024
    key_cache_ttl: float = 5.0
    trusted_proxies: tuple[str, ...] = ()
    admin_token: str | None = None
    access_log: bool = True
    admin_listen: str | None = None
    admin_idle_timeout: float | None = None
    max_header_bytes: int = DEFAULT_LIMITS.header_bytes
    max_headers: int = DEFAULT_LIMITS.headers
    max_target_bytes: int = DEFAULT_LIMITS.target_bytes
    max_params: int = DEFAULT_LIMITS.params
    max_parts: int = DEFAULT_LIMITS.parts
    max_json_members: int = DEFAULT_LIMITS.json_members
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    status_listen: str | None = None
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    log_format: str = "json"
    log_level: str = "info"

    def limits(self) -> Limits:
        """The bounds on every input these settings name (the rest at their defaults)."""
        return Limits(
            header_bytes=self.max_header_bytes,
            headers=self.max_headers,
            target_bytes=self.max_target_bytes,
            params=self.max_params,
            parts=self.max_parts,
            json_members=self.max_json_members,
            json_depth=DEFAULT_LIMITS.json_depth,
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Settings:
        data = json.loads(text)
        data["trusted_proxies"] = tuple(data["trusted_proxies"])
        return cls(**data)

    def __repr__(self) -> str:
        # Settings end up in tracebacks and debug output: never show the two secrets they can hold.
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("upstream_authorization", "admin_token"):
            if shown[name] is not None:
                shown[name] = "***"
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


_NAMES = tuple(f.name for f in fields(Settings))
_LIMITS = ("max_header_bytes", "max_headers", "max_target_bytes", "max_params", "max_parts", "max_json_members")


def load(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Merge the sources; `flags` holds only the options given on the command line (None means not given)."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    unknown = set(flags) - set(_NAMES)
    if unknown:
        raise ConfigError(f"unknown setting {sorted(unknown)[0]!r}")
    check_environment(environ)
    path = config_file or environ.get("KEYSCOPE_CONFIG")
    merged: dict[str, tuple[Any, str]] = {}
    if path:
        for name, value in _read_file(path).items():
            merged[name] = (value, f"{path}: {name.replace('_', '-')}")
    for name in _NAMES:
        env_name = "KEYSCOPE_" + name.upper()
        if env_name in environ:
            merged[name] = (environ[env_name], env_name)
    for name, value in flags.items():
        merged[name] = (value, "--" + name.replace("_", "-"))
    values = {name: _convert(name, value, origin) for name, (value, origin) in merged.items()}
    return validate(Settings(**values))


def check_environment(environ: Mapping[str, str]) -> None:
    """A KEYSCOPE_* variable that is neither a setting nor one of keyscope's own is a typo (KEYSCOPE_MAX_BODY
    for KEYSCOPE_MAX_BODY_SIZE) that would otherwise be ignored in silence: an error, as an unknown YAML key is."""
    settings = {"KEYSCOPE_" + name.upper() for name in _NAMES}
    for env_name in sorted(environ):
        if not env_name.startswith("KEYSCOPE_") or env_name in settings or env_name in OTHER_ENV:
            continue
        if env_name.startswith(OTHER_ENV_PREFIXES):
            continue
        close = difflib.get_close_matches(env_name, sorted(settings | OTHER_ENV), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"unknown environment variable {env_name} (not a keyscope setting{hint})")


def startup_warnings(settings: Settings) -> list[str]:
    """One line each, for `keyscope serve` to print on stderr before serving."""
    warnings = []
    if settings.admin_token is None:
        warnings.append(
            "warning: no admin token (KEYSCOPE_ADMIN_TOKEN or --admin-token): /settings/2/api-keys refuses every "
            "call and only primary keys reach /provisioning/1/*; manage keys with the keyscope CLI"
        )
    return warnings


def _read_file(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of setting: value")
    result: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in _NAMES:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        result[name] = value
    return result


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(name: str, value: Any, origin: str) -> Any:
    """Turn a value from any source (strings from the environment, YAML scalars) into the field's type."""
    kind = Settings.__dataclass_fields__[name].type
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError
        if kind == "int":
            if isinstance(value, bool) or isinstance(value, float):
                raise ValueError
            return int(str(value).strip())
        if kind in ("float", "float | None"):
            if isinstance(value, bool):
                raise ValueError
            return float(str(value).strip())
        if kind == "tuple[str, ...]":
            items = value if isinstance(value, (list, tuple)) else str(value).split(",")
            return tuple(str(item).strip() for item in items if str(item).strip())
        if value is None:
            return None
        if isinstance(value, (dict, list)):
            raise ValueError
        return str(value)
    except ValueError:
        raise ConfigError(f"{origin}: invalid value {value!r} (expected {kind.replace(' | None', '')})") from None


def validate(settings: Settings) -> Settings:
    """Check ranges and formats; returns the settings with the upstream URL normalised."""
    if not settings.upstream:
        raise ConfigError("no upstream: give --upstream http://HOST:PORT[/base] (or KEYSCOPE_UPSTREAM)")
    upstream = upstream_base(settings.upstream)
    if not 0 <= settings.port <= 65535:
        raise ConfigError(f"port {settings.port} is out of range")
    if settings.workers < 1:
        raise ConfigError("workers must be at least 1")
    if not settings.upstream_timeout > 0:
        raise ConfigError("upstream-timeout must be a positive number of seconds")
    if settings.upstream_connections < 1:
        raise ConfigError("upstream-connections must be at least 1")
    if settings.max_body_size < 0:
        raise ConfigError("max-body-size must not be negative")
    if settings.key_cache_ttl < 0:
        raise ConfigError("key-cache-ttl must not be negative")
    for cidr in settings.trusted_proxies:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"trusted-proxies: {cidr!r} is not an IP address or CIDR range") from None
    if settings.admin_token is not None and not settings.admin_token:
        raise ConfigError("admin-token must not be empty")
    if settings.upstream_authorization is not None and any(c in settings.upstream_authorization for c in "\r\n\0"):
        raise ConfigError("upstream-authorization must be a single header value")
    if settings.admin_listen is not None:
        host, port = listen_address(settings.admin_listen)
        if settings.admin_token is None:
            raise ConfigError("admin-listen needs an admin token (KEYSCOPE_ADMIN_TOKEN): the web interface signs in with it")
        if port == settings.port and port != 0:
            raise ConfigError(f"admin-listen {settings.admin_listen!r} must not use the traffic port {settings.port}")
    if settings.admin_idle_timeout is not None and not settings.admin_idle_timeout > 0:
        raise ConfigError("admin-idle-timeout must be a positive number of seconds")
    for name in _LIMITS:
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name.replace('_', '-')} must be at least 1")
    if not 0 < settings.header_timeout < math.inf:
        raise ConfigError("header-timeout must be a positive number of seconds")
    _validate_status(settings)
    log_format, log_level = settings.log_format.strip().lower(), settings.log_level.strip().lower()
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"log-format must be one of {', '.join(LOG_FORMATS)}, not {settings.log_format!r}")
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"log-level must be one of {', '.join(LOG_LEVELS)}, not {settings.log_level!r}")
    return dataclasses.replace(settings, upstream=upstream, log_format=log_format, log_level=log_level)


def _validate_status(settings: Settings) -> None:
    """`--status-listen` is an address of its own (never the traffic port nor the web interface's)."""
    if not 0 <= settings.drain_seconds < math.inf:
        raise ConfigError("drain-seconds must be a number of seconds, 0 or more")
    if settings.status_listen is None:
        return
    host, port = listen_address(settings.status_listen)
    if port == settings.port and port != 0:
        raise ConfigError(f"status-listen {settings.status_listen!r} must not use the traffic port {settings.port}")
    if settings.admin_listen is not None and port != 0 and listen_address(settings.admin_listen)[1] == port:
        raise ConfigError(f"status-listen {settings.status_listen!r} must not use the admin-listen port {port}")


def listen_socket(host: str, port: int, *, share: bool = False) -> socket.socket:
    """Bound and listening, for a listener beside the gateway's (`--admin-listen`, `--status-listen`); `share`:
    SO_REUSEPORT, so that every worker of `--workers N` listens on it. OSError is the caller's to report."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if share:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def listen_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT` or just `PORT` (loopback)."""
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
