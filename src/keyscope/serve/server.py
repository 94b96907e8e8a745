"""`keyscope serve`: validate everything, then run the gateway on uvicorn.

Everything that can be wrong with a configuration (settings, endpoints.yaml, the store, the upstream URL) is
checked before uvicorn starts, and stops start-up with one line on stderr and exit status 2: never a
half-working gateway. `--workers N` runs N uvicorn worker processes; they receive the validated settings
through an environment variable and build their gateway with `worker_app()`.

`python -m keyscope.serve.server [serve] --upstream ...` runs the same command without the console script.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import importlib.util
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import uvicorn

from keyscope.allowlist import matcher
from keyscope.allowlist.table import EndpointsError
from keyscope.allowlist.table import load as load_endpoints
from keyscope.core import settings as config
from keyscope.core.settings import ConfigError, Settings
from keyscope.gateway.app import Gateway
from keyscope.gateway.protocol import GatewayProtocol
from keyscope.observe import accesslog
from keyscope.serve import status
from keyscope.serve.web import serve_with_web
from keyscope.store import store_from_url

DESCRIPTION = "Run the keyscope gateway in front of an upstream HTTP API."

# flag name -> (argparse keyword arguments); every one is also KEYSCOPE_<NAME> and a key of the config file.
_OPTIONS: dict[str, dict[str, Any]] = {
    "upstream": {"metavar": "URL", "help": "the API to protect: http://HOST:PORT[/base] (required)"},
    "endpoints": {"metavar": "FILE", "help": "the allowlist (default: the packaged endpoints.yaml)"},
    "store": {"metavar": "URL", "help": f"sqlite:///FILE or postgresql://... (default {config.DEFAULT_STORE})"},
    "host": {"help": "address to listen on (default 127.0.0.1)"},
    "port": {"type": int, "help": "port to listen on (default 8080)"},
    "workers": {"type": int, "metavar": "N", "help": "worker processes (default 1)"},
    "upstream_authorization": {"metavar": "VALUE", "help": "Authorization header sent upstream instead of the key"},
    "upstream_timeout": {"type": float, "metavar": "SECONDS", "help": "connect/read timeout upstream (default 30)"},
    "upstream_connections": {"type": int, "metavar": "N", "help": "pooled upstream connections per worker (256)"},
    "max_body_size": {"type": int, "metavar": "BYTES", "help": "largest body inspected for ids (default 1 MiB)"},
    "key_cache_ttl": {"type": float, "metavar": "SECONDS", "help": "how long key records are cached (default 5)"},
    "trusted_proxies": {"metavar": "CIDR,...", "help": "peers whose X-Forwarded-For is believed"},
    "admin_token": {
        "metavar": "TOKEN",
        "help": "Bearer token for the management API (prefer KEYSCOPE_ADMIN_TOKEN: flags show in ps)",
    },
    "admin_listen": {"metavar": "HOST:PORT", "help": "serve the web interface there (needs the admin token)"},
    "admin_idle_timeout": {"type": float, "metavar": "SECONDS", "help": "web sessions end after this idle time"},
    "max_header_bytes": {"type": int, "metavar": "BYTES", "help": "header names and values per request (32 KiB; 431)"},
    "max_headers": {"type": int, "metavar": "N", "help": "header lines per request (default 100; 431)"},
    "max_target_bytes": {"type": int, "metavar": "BYTES", "help": "path and query per request (default 8192; 414)"},
    "max_params": {"type": int, "metavar": "N", "help": "query and form parameters per request (default 100; 400)"},
    "max_parts": {"type": int, "metavar": "N", "help": "parts of a multipart body (default 100; 400)"},
    "max_json_members": {"type": int, "metavar": "N", "help": "members of a JSON body's objects (10000; 400)"},
    "header_timeout": {"type": float, "metavar": "SECONDS", "help": "time to send a request head (default 30)"},
    "status_listen": {"metavar": "HOST:PORT", "help": "serve /healthz and /readyz there, without authentication"},
    "drain_seconds": {"type": float, "metavar": "SECONDS",
                      "help": "with --status-listen: after SIGTERM, not ready but serving this long (default 5)"},
    "log_format": {"metavar": "json|text", "help": "access lines and stderr lines as JSON (default) or name=value"},
    "log_level": {"metavar": "LEVEL", "help": "stderr lines from this level on: " + "|".join(config.LOG_LEVELS)
                  + " (default info)"},
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `serve` to a subparsers object; the command is `args.run(args)` (also `args.func`)."""
    parser = subparsers.add_parser("serve", help="run the gateway", description=DESCRIPTION)
    _add_options(parser)
    return parser


def _add_options(parser: argparse.ArgumentParser) -> None:
    for name, kwargs in _OPTIONS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None, **kwargs)
    parser.add_argument("--config", metavar="FILE", default=None, help="YAML file of settings (KEYSCOPE_CONFIG)")
    parser.add_argument(
        "--access-log", dest="access_log", default=None, action=argparse.BooleanOptionalAction,
        help="one JSON line per request on stdout (default on)",
    )
    parser.set_defaults(run=run, func=run)


def run(args: argparse.Namespace) -> int:
    """Validate, then serve until stopped. Returns the exit status."""
    flags = {name: getattr(args, name, None) for name in (*_OPTIONS, "access_log")}
    try:
        settings = config.load(flags, os.environ, args.config)
        prepare(settings)
    except ConfigError as exc:
        for line in getattr(exc, "lines", None) or (_one_line(str(exc)),):
            print(f"keyscope serve: {line}", file=sys.stderr)
        return 2
    for line in config.startup_warnings(settings):
        print(f"keyscope serve: {line}", file=sys.stderr, flush=True)
    serve(settings)
    return 0


class ProblemsError(ConfigError):
    """Several problems at once (a broken endpoints.yaml): `keyscope serve` prints one line per problem."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = tuple(lines)


def prepare(settings: Settings) -> None:
    """Everything a worker will need, checked once here; raises ConfigError with one line (one per problem
    of a broken endpoints file: ProblemsError)."""
    try:
        endpoints = load_endpoints(settings.endpoints)
        matcher.compile(endpoints)
    except EndpointsError as exc:
        raise ProblemsError([f"endpoints: {_one_line(problem)}" for problem in exc.problems]) from None
    except ValueError as exc:
        raise ConfigError(f"endpoints: {_one_line(str(exc))}") from None
    asyncio.run(_check_store(settings.store))
    _check_listen(settings.host, settings.port)
    if settings.admin_listen is not None and importlib.util.find_spec("keyscope.serve.web") is None:
        raise ConfigError("admin-listen: this installation has no web interface (keyscope.web)")
    _check_status_listen(settings)


def _check_status_listen(settings: Settings) -> None:
    if settings.status_listen is None:
        return
    if settings.admin_listen is not None and settings.workers > 1:
        raise ConfigError("status-listen with admin-listen works with one worker only (for now): drop one of them")
    host, port = config.listen_address(settings.status_listen)
    try:
        _check_listen(host, port)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (status-listen)") from None


def _check_listen(host: str, port: int) -> None:
    """The address must be free now; uvicorn binds it a moment later (SO_REUSEADDR, as uvicorn does)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


async def _check_store(url: str) -> None:
    shown = _redact(url)
    try:
        store = store_from_url(url)
    except (ValueError, ImportError) as exc:
        raise ConfigError(_one_line(str(exc).replace(url, shown))) from None
    try:
        await store.open()
    except Exception as exc:  # the store's own errors and its driver's: one line either way
        reason = _one_line(str(exc).replace(url, shown)) or exc.__class__.__name__
        raise ConfigError(f"cannot open store {shown}: {reason}") from None
    await store.close()


def serve(settings: Settings) -> None:
    signal.signal(signal.SIGTERM, _terminated)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": GatewayProtocol,
        "lifespan": "on",
        "access_log": False,
        "proxy_headers": False,
        "server_header": False,
        "date_header": False,
        "log_level": settings.log_level,
        "timeout_graceful_shutdown": 10,
    }
    if settings.log_format == "json":
        options["log_config"] = uvicorn_log_config()
    if settings.status_listen is not None:
        # uvicorn calls it right after start-up, then every second, in each gateway process (keyscope.serve.status)
        options.update(callback_notify=status.watch, timeout_notify=status.NOTIFY_SECONDS)
        if settings.admin_listen is None:
            _serve_with_status(settings, options)
            return
    if settings.admin_listen is not None:
        serve_with_web(settings, options, build_app)
    elif settings.workers > 1:
        os.environ[config.WORKER_ENV] = settings.to_json()
        uvicorn.run("keyscope.serve.server:worker_app", factory=True, workers=settings.workers, **options)
    else:
        uvicorn.run(build_app(settings), **options)


def _serve_with_status(settings: Settings, options: dict[str, Any]) -> None:
    """As `uvicorn.run` does, with `callback_notify` (which `uvicorn.run` does not take)."""
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    if settings.workers > 1:
        os.environ[config.WORKER_ENV] = settings.to_json()
        conf = uvicorn.Config("keyscope.serve.server:worker_app", factory=True, workers=settings.workers, **options)
        try:
            Multiprocess(conf, sockets=[conf.bind_socket()]).run()
        except KeyboardInterrupt:
            pass
        return
    server = uvicorn.Server(uvicorn.Config(build_app(settings), **options))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def build_app(settings: Settings) -> Any:
    _configure_logging(settings)
    accesslog.set_format(settings.log_format)
    if settings.access_log:
        accesslog.enable()
    else:
        accesslog.disable()
    gateway = Gateway.from_settings(settings)
    if settings.status_listen is not None:
        status.attach(gateway, settings)
    _stop_gathering_on_exit_signals()
    _tune_gc()
    return gateway


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM outside uvicorn's own handler: a normal exit with status 0.

    uvicorn drains on SIGTERM, then restores the handler it found and raises the signal again. With the default
    action the process would die by the signal there (status 143, no atexit hook, no `logging.shutdown`);
    this makes that second delivery an ordinary exit instead, as SIGINT already is (uvicorn.run swallows the
    KeyboardInterrupt): a stop that was asked for and done is a success. Installed by `serve()` before uvicorn
    starts, so it is also what a SIGTERM during start-up meets."""
    raise SystemExit(0)


def _stop_gathering_on_exit_signals() -> None:
    """Make SIGINT and SIGTERM first stop the access log's gathering, then do what they did before.

    Under `--workers N` this runs inside uvicorn's `capture_signals` (the worker calls the factory there), so
    it wraps uvicorn's `handle_exit`: from the first signal on, lines are written as they come. That matters
    when the drain is cut short (a second SIGINT skips the lifespan shutdown that flushes) and uvicorn then
    re-raises SIGTERM in a worker, whose default action kills it before any exit hook. With one process this
    runs before uvicorn starts and wraps the handlers uvicorn restores at the end; the lifespan shutdown and
    `logging.shutdown` write the lines there. Nothing changes on the request path."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread (an embedder's thread: nothing to do)
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(signum)
        if callable(previous):
            signal.signal(signum, functools.partial(_on_exit_signal, previous))


def _on_exit_signal(previous: Any, signum: int, frame: object) -> None:
    accesslog.stop_gathering()
    previous(signum, frame)


def _tune_gc() -> None:
    """Fewer collections of the young generation (each walks every object of the requests in flight), and what
    exists at start-up frozen so that full collections skip it. Insurance rather than a measured gain: since
    the request path leaves no reference cycles (tests/test_garbage.py), the load benchmark shows no
    difference either way; with one cycle per refusal, the collector had been 13% of a worker's CPU."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's logging (`log_config`) with its lines on stderr as JSON, like keyscope's own (`--log-format
    json`). uvicorn applies it in every process it starts; existing loggers (keyscope's) are left alone."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "keyscope.observe.accesslog.JsonFormatter"}},
        "handlers": {"default": handler},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["default"], "level": "INFO", "propagate": False},
        },
    }


def _log_level(name: str) -> int:
    return 5 if name == "trace" else logging.getLevelName(name.upper())  # uvicorn's TRACE is 5


def _configure_logging(settings: Settings) -> None:
    """keyscope's own warnings on stderr beside uvicorn's, in the same format (`--log-format`) and from
    `--log-level` on; log records skip what nobody reads here."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    own = logging.getLogger("keyscope")
    if not own.handlers:
        handler = logging.StreamHandler(sys.stderr)
        own.addHandler(handler)
        own.propagate = False
    formatter = (accesslog.JsonFormatter() if settings.log_format == "json"
                 else logging.Formatter("%(levelname)s:  %(name)s: %(message)s"))
    for handler in own.handlers:
        handler.setFormatter(formatter)
    own.setLevel(_log_level(settings.log_level))


def worker_app() -> Any:
    """The uvicorn factory each worker process calls (`--workers N`)."""
    text = os.environ.get(config.WORKER_ENV)
    if not text:
        raise RuntimeError(f"{config.WORKER_ENV} is not set: start workers with `keyscope serve --workers N`")
    return build_app(Settings.from_json(text))


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def _one_line(message: str) -> str:
    return " ".join(message.split())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="keyscope serve", description=DESCRIPTION)
    _add_options(parser)
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
