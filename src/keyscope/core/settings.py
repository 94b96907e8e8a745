"""`keyscope serve` settings: each declared once, as a field of `Settings`, and checked before anything starts.

A field's `option()` is the whole declaration: its type and default are the field's, its help text, metavar and
check sit beside them, and from these come the flag, the KEYSCOPE_* variable, the YAML key (`settings_sources`)
and the README's options table (tests/test_settings.py). Every value is validated here, so that a bad setting
stops start-up with one line naming it instead of surfacing on the first request.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from keyscope.core.limits import DEFAULT as DEFAULT_LIMITS
from keyscope.core.limits import Limits
from keyscope.core.redisurl import RedisAddress
from keyscope.core.settings_option import (
    ConfigError,
    at_least_one,
    declared,
    finite_positive_seconds,
    finite_seconds,
    header_value,
    listen,
    listen_address,
    networks,
    not_empty,
    not_negative,
    one_of,
    option,
    port_number,
    positive_seconds,
    upstream_url,
)
from keyscope.core.settings_sources import gather

DEFAULT_STORE = "sqlite:///keyscope.db"
DEFAULT_HEADER_TIMEOUT = 30.0
"""Seconds a connection may take to send a request head (nginx's client_header_timeout is 60)."""
DEFAULT_DRAIN_SECONDS = 5.0
"""Seconds `keyscope serve --status-listen` keeps serving after SIGTERM with readiness failing (load balancers
notice and stop sending), before it stops accepting and finishes what is in flight."""
LOG_FORMATS = ("json", "text")
"""`--log-format`: of the access lines on stdout and of keyscope's and uvicorn's own lines on stderr."""
CONTRACTS = ("envoy", "nginx")
"""`--contract` of `keyscope authorize`: how check requests carry the original request (keyscope.gateway.authorizer)."""
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
"""`--log-level`: uvicorn's names; it sets the level of keyscope's and uvicorn's lines on stderr."""
RATE_LIMIT_ON_ERROR = ("allow", "deny")
"""`--rate-limit-on-error`: what a request with rate limits gets while the Redis counters do not answer."""


def events_urls(name: str, value: tuple[str, ...]) -> tuple[str, ...]:
    """Each an `http://` or `https://` URL with a host, without credentials (the signature authenticates keyscope,
    and a password in a URL ends up in logs) or a fragment; the same URL twice is one receiver."""
    for url in value:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ConfigError(f"{name} {url!r} is not a valid URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
            raise ConfigError(f"{name} {url!r} must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise ConfigError(f"{name} {url!r} must not carry credentials: receivers check X-Keyscope-Signature")
        if parts.fragment or "#" in url or any(c in url for c in " \r\n\t\0"):
            raise ConfigError(f"{name} {url!r} must not have a fragment, spaces or control characters")
    return tuple(dict.fromkeys(value))


def at_least_a_second(name: str, value: float) -> float:
    if not 1 <= value < math.inf:
        raise ConfigError(f"{name} must be a number of seconds, at least 1")
    return value


def rate_limit_store(name: str, value: str) -> str:
    """`local`, or `redis://[:password@]HOST[:PORT][/DB]` (`rediss://` for TLS)."""
    text = value.strip()
    if text.lower() == "local":
        return "local"
    try:
        RedisAddress.parse(text)
    except ValueError as exc:
        raise ConfigError(f"{name} must be local or redis://HOST:PORT/DB: {exc}") from None
    return text


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of `keyscope serve`, in the order of `--help` and the README's table."""

    upstream: str = option("", "the API to protect, `http://HOST:PORT[/base]`", metavar="URL",
                           shown="(required by `serve`)", check=upstream_url)
    contract: str | None = option(
        None, "`keyscope authorize` only, and required there: `envoy` (ext_authz HTTP service) or `nginx` "
        "(auth_request), how check requests carry the original request", metavar="CONTRACT", check=one_of(*CONTRACTS))
    endpoints: str | None = option(None, "the allowlist", metavar="FILE", shown="packaged `endpoints.yaml`")
    store: str = option(DEFAULT_STORE, "`sqlite:///rel.db`, `sqlite:////abs/path.db`, "
                        "`postgresql://user@host:port/db`", metavar="URL")
    host: str = option("127.0.0.1", "address to listen on", metavar="HOST")
    port: int = option(8080, "port to listen on", metavar="PORT", check=port_number)
    workers: int = option(1, "worker processes (both stores)", metavar="N", check=at_least_one)
    upstream_authorization: str | None = option(
        None, "`Authorization` sent upstream in place of the client's", metavar="VALUE", check=header_value)
    upstream_timeout: float = option(30.0, "upstream connect/read timeout (504 past it)", metavar="SECONDS",
                                     check=positive_seconds)
    upstream_connections: int = option(256, "pooled upstream connections per worker", metavar="N",
                                       check=at_least_one)
    max_body_size: int = option(1024 * 1024, "largest body inspected for ids (413 past it)", metavar="BYTES",
                                shown="1 MiB", check=not_negative)
    key_cache_ttl: float = option(5.0, "how long a key record is cached per worker", metavar="SECONDS",
                                  check=not_negative)
    rate_limit_store: str = option(
        "local", "where the rate-limit counters live: `local` (each worker counts alone) or `redis://HOST:PORT/DB` "
        "(every worker of every instance shares them)", metavar="STORE", check=rate_limit_store)
    rate_limit_on_error: str = option(
        "allow", "`allow` or `deny` (503): a limited key's requests while Redis does not answer", metavar="POLICY",
        check=one_of(*RATE_LIMIT_ON_ERROR))
    shadow: bool = option(
        False, "shadow mode: forward what the allowlist, scope, existence or a rate limit would refuse, logged as "
        "`shadow` (a dry run of enforcement)")
    trusted_proxies: tuple[str, ...] = option(
        (), "peers whose `X-Forwarded-For` is believed for `allowedIPs`", metavar="CIDR,...", check=networks)
    admin_token: str | None = option(
        None, "Bearer token for the management API and the web interface (prefer `KEYSCOPE_ADMIN_TOKEN`: flags "
        "show in `ps`)", metavar="TOKEN", check=not_empty)
    admin_listen: str | None = option(
        None, "serve the web interface there (never on the traffic port; needs the admin token)",
        metavar="HOST:PORT", shown="off", check=listen)
    admin_idle_timeout: float | None = option(
        None, "web interface sessions end after this idle time", metavar="SECONDS", check=positive_seconds)
    max_header_bytes: int = option(DEFAULT_LIMITS.header_bytes, "header names and values of one request (431 "
                                   "past it)", metavar="BYTES", check=at_least_one)
    max_headers: int = option(DEFAULT_LIMITS.headers, "header lines of one request (431 past it)", metavar="N",
                              check=at_least_one)
    max_target_bytes: int = option(DEFAULT_LIMITS.target_bytes, "path and query of one request, `?` not counted "
                                   "(414 past it)", metavar="BYTES", check=at_least_one)
    max_params: int = option(DEFAULT_LIMITS.params, "`&`-separated query and form parameters of one request (400 "
                             "past it)", metavar="N", check=at_least_one)
    max_parts: int = option(DEFAULT_LIMITS.parts, "parts of a multipart body (400 past it)", metavar="N",
                            check=at_least_one)
    max_json_members: int = option(DEFAULT_LIMITS.json_members, "members of all the objects of a JSON body (400 "
                                   "past it)", metavar="N", check=at_least_one)
    header_timeout: float = option(
        DEFAULT_HEADER_TIMEOUT, "time a connection has to send a complete request head (closed past it)",
        metavar="SECONDS", check=finite_positive_seconds)
    status_listen: str | None = option(
        None, "serve `/healthz` and `/readyz` there, without authentication (never on the traffic port)",
        metavar="HOST:PORT", shown="off", check=listen)
    drain_seconds: float = option(
        DEFAULT_DRAIN_SECONDS, "with `--status-listen`: after SIGTERM, not ready but still serving this long",
        metavar="SECONDS", check=finite_seconds)
    log_format: str = option(
        "json", "`json` or `text`: the access lines on stdout, keyscope's and uvicorn's own lines on stderr",
        metavar="FORMAT", check=one_of(*LOG_FORMATS))
    log_level: str = option(
        "info", ", ".join(f"`{level}`" for level in LOG_LEVELS[:-1]) + f" or `{LOG_LEVELS[-1]}`: the lines on "
        "stderr from this level on (access lines follow `--access-log`)", metavar="LEVEL", check=one_of(*LOG_LEVELS))
    access_log: bool = option(True, "one line per request on stdout (`--log-format`)")
    events_url: tuple[str, ...] = option(
        (), "POST each deletion event to this receiver (repeatable, or comma-separated; needs `--events-secret`): "
        "[Deletion events](#deletion-events)", metavar="URL", check=events_urls)
    events_secret: str | None = option(
        None, "HMAC-SHA256 key of the events' `X-Keyscope-Signature` (prefer `KEYSCOPE_EVENTS_SECRET`: flags show "
        "in `ps`)", metavar="SECRET", check=not_empty)
    events_timeout: float = option(10.0, "time a receiver has to answer an event (a failure past it, retried)",
                                   metavar="SECONDS", check=finite_positive_seconds)
    events_retry_max: float = option(
        60.0, "longest wait between attempts at an event a receiver did not take (the back-off doubles from 0.5 s "
        "up to it, with jitter)", metavar="SECONDS", check=finite_positive_seconds)
    events_lease: float = option(
        15.0, "how long one process's claim to deliver to a receiver lasts unrenewed: another worker or instance "
        "takes over this long after one dies", metavar="SECONDS", check=at_least_a_second)

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
        data["events_url"] = tuple(data["events_url"])
        return cls(**data)

    def __repr__(self) -> str:
        # Settings end up in tracebacks and debug output: never show the two secrets they can hold.
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("upstream_authorization", "admin_token", "events_secret"):
            if shown[name] is not None:
                shown[name] = "***"
        if "@" in shown["rate_limit_store"]:  # redis://:password@host
            shown["rate_limit_store"] = "***"
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


OPTIONS = declared(Settings)
"""The declarations, in order: what the flags, the environment, the YAML file and the README are read against."""


def load(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Merge the sources (flag > environment > file > default) and validate; `flags` holds only the options
    given on the command line (None means not given)."""
    return validate(Settings(**gather(OPTIONS, flags, environ, config_file)))


def validate(settings: Settings) -> Settings:
    """Each setting's own check in declaration order, then those between settings; returns the settings
    normalised (the upstream URL without its trailing slash, the log format and level in lower case)."""
    checked = {
        option.name: option.check(option.dashed, value)
        for option in OPTIONS
        if option.check is not None and (value := getattr(settings, option.name)) is not None
        and not (option.name == "upstream" and settings.contract is not None)  # an authorizer forwards nothing
    }
    settings = dataclasses.replace(settings, **checked)
    _check_contract(settings)
    _check_listeners(settings)
    _check_events(settings)
    return settings


def _check_events(settings: Settings) -> None:
    """A receiver that acts on deletions must be able to tell keyscope's events from anyone's: no URL without
    a secret to sign with (unsigned events are never sent)."""
    if settings.events_url and settings.events_secret is None:
        raise ConfigError("events-url needs --events-secret (or KEYSCOPE_EVENTS_SECRET): events are always signed")


def _check_contract(settings: Settings) -> None:
    """`keyscope authorize` forwards nothing and has no management API, so no web interface beside it."""
    if settings.contract is not None and settings.admin_listen is not None:
        raise ConfigError("admin-listen does not apply to keyscope authorize: the web interface runs beside keyscope "
                          "serve (manage keys with the keyscope CLI)")


def _check_listeners(settings: Settings) -> None:
    """The traffic, the web interface and the probes listen on three different ports (0: any free one)."""
    if settings.admin_listen is not None:
        port = listen_address(settings.admin_listen)[1]
        if settings.admin_token is None:
            raise ConfigError(
                "admin-listen needs an admin token (KEYSCOPE_ADMIN_TOKEN): the web interface signs in with it"
            )
        if port == settings.port and port != 0:
            raise ConfigError(f"admin-listen {settings.admin_listen!r} must not use the traffic port {settings.port}")
    if settings.status_listen is not None:
        port = listen_address(settings.status_listen)[1]
        if port == settings.port and port != 0:
            raise ConfigError(f"status-listen {settings.status_listen!r} must not use the traffic port {settings.port}")
        if settings.admin_listen is not None and port != 0 and listen_address(settings.admin_listen)[1] == port:
            raise ConfigError(f"status-listen {settings.status_listen!r} must not use the admin-listen port {port}")


def startup_warnings(settings: Settings) -> list[str]:
    """One line each, for `keyscope serve` to print on stderr before serving."""
    warnings = []
    if settings.admin_token is None and settings.contract is None:  # an authorizer has no management API
        warnings.append(
            "warning: no admin token (KEYSCOPE_ADMIN_TOKEN or --admin-token): /settings/2/api-keys refuses every "
            "call and only primary keys reach /provisioning/1/*; manage keys with the keyscope CLI"
        )
    return warnings
