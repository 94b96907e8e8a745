"""`keyscope serve`: validate everything, then run the gateway on uvicorn.

Everything that can be wrong with a configuration (settings, endpoints.yaml, the store, the upstream URL) is
checked before uvicorn starts, and stops start-up with one line on stderr and exit status 2: never a
half-working gateway. `--workers N` runs N uvicorn worker processes; they receive the validated settings
through an environment variable and build their gateway with `worker_app()`.
Its flags are the settings' declarations (keyscope.core.settings), read by keyscope.core.settings_sources.

`keyscope authorize --contract envoy|nginx` is the same command with an authorizer (keyscope.gateway.authorizer)
in place of the gateway: every setting, check and start-up step is the same but the upstream's, which it does not
need. `python -m keyscope.serve.server [serve|authorize] ...` runs either without the console script.
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
from keyscope.core.settings_option import ProblemsError
from keyscope.core.settings_sources import WORKER_ENV, add_flags, gather, given_flags
from keyscope.events import deliverer as events
from keyscope.gateway.app import Gateway
from keyscope.gateway.authorizer import Authorizer
from keyscope.gateway.protocol import GatewayProtocol
from keyscope.observe import accesslog
from keyscope.serve import status
from keyscope.serve.sockets import check_free, check_status_listen
from keyscope.serve.web import serve_with_web
from keyscope.store import store_from_url

DESCRIPTION = "Run the keyscope gateway in front of an upstream HTTP API."
AUTHORIZE_DESCRIPTION = (
    "Answer authorization checks for Envoy (ext_authz HTTP service) or nginx (auth_request) with the gateway's "
    "steps 1-5, forwarding nothing. --contract is required; --upstream and the upstream settings do not apply."
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `serve` to a subparsers object; the command is `args.run(args)` (also `args.func`)."""
    parser = subparsers.add_parser("serve", help="run the gateway", description=DESCRIPTION)
    _add_options(parser)
    return parser


def add_authorize_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `authorize` to a subparsers object: `serve`'s options, run as an authorizer."""
    parser = subparsers.add_parser("authorize", help="answer Envoy or nginx authorization checks",
                                   description=AUTHORIZE_DESCRIPTION)
    _add_options(parser, run_authorize)
    return parser


def _add_options(parser: argparse.ArgumentParser, command: Any = None) -> None:
    add_flags(parser, config.OPTIONS)
    parser.set_defaults(run=command or run, func=command or run)


def run_authorize(args: argparse.Namespace) -> int:
    return run(args, "authorize")


def run(args: argparse.Namespace, command: str = "serve") -> int:
    """Validate, then serve until stopped. Returns the exit status."""
    try:
        # config.load(), with the command's own check first: `authorize` without a contract is told so
        given = Settings(**gather(config.OPTIONS, given_flags(args, config.OPTIONS), os.environ, args.config))
        _check_command(given, command)
        settings = config.validate(given)
        prepare(settings)
    except ConfigError as exc:
        for line in getattr(exc, "lines", None) or (_one_line(str(exc)),):
            print(f"keyscope {command}: {line}", file=sys.stderr)
        return 2
    for line in config.startup_warnings(settings):
        print(f"keyscope {command}: {line}", file=sys.stderr, flush=True)
    serve(settings)
    return 0


def _check_command(settings: Settings, command: str) -> None:
    """One way to run each: `serve` proxies (no contract), `authorize` answers checks (a contract)."""
    if command == "serve" and settings.contract is not None:
        raise ConfigError("contract is for `keyscope authorize`: serve proxies every request itself")
    if command == "authorize" and settings.contract is None:
        raise ConfigError(f"authorize needs --contract ({' or '.join(config.CONTRACTS)}), or KEYSCOPE_CONTRACT")


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
    check_free(settings.host, settings.port)
    if settings.admin_listen is not None and importlib.util.find_spec("keyscope.serve.web") is None:
        raise ConfigError("admin-listen: this installation has no web interface (keyscope.web)")
    check_status_listen(settings)


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
        if settings.admin_listen is None or settings.workers > 1:
            _serve_with_status(settings, options)
            return
    if settings.admin_listen is not None:
        serve_with_web(settings, options, build_app)
    elif settings.workers > 1:
        os.environ[WORKER_ENV] = settings.to_json()
        uvicorn.run("keyscope.serve.server:worker_app", factory=True, workers=settings.workers, **options)
    else:
        uvicorn.run(build_app(settings), **options)


def _serve_with_status(settings: Settings, options: dict[str, Any]) -> None:
    """As `uvicorn.run` does, with `callback_notify` (which `uvicorn.run` does not take)."""
    from uvicorn.config import STARTUP_FAILURE

    if settings.workers > 1:
        os.environ[WORKER_ENV] = settings.to_json()
        conf = uvicorn.Config("keyscope.serve.server:worker_app", factory=True, workers=settings.workers, **options)
        try:
            status.supervise(conf, [conf.bind_socket()], settings)  # uvicorn's Multiprocess, /metrics summed
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
    gateway = Authorizer.from_settings(settings) if settings.contract else Gateway.from_settings(settings)
    if settings.status_listen is not None:
        status.attach(gateway, settings)
    events.attach(gateway, settings)  # --events-url: deletion events delivered from this process (keyscope.events)
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
    text = os.environ.get(WORKER_ENV)
    if not text:
        raise RuntimeError(f"{WORKER_ENV} is not set: start workers with `keyscope serve --workers N`")
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
    command = "serve"
    if argv[:1] in (["serve"], ["authorize"]):
        command, argv = argv[0], argv[1:]
    description = DESCRIPTION if command == "serve" else AUTHORIZE_DESCRIPTION
    parser = argparse.ArgumentParser(prog=f"keyscope {command}", description=description)
    _add_options(parser)
    args = parser.parse_args(argv)
    return run(args, command)


if __name__ == "__main__":
    sys.exit(main())
