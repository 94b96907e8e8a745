"""`keyscope serve --status-listen HOST:PORT`: health and readiness on a listener of their own, and the drain.

    GET /healthz   200 {"status": "ok"} while the process serves
    GET /readyz    200 when the store answers (a cheap query, 1 s at most), the allowlist is loaded and the
                   gateway is not draining; else 503 naming what is not: {"ready": false, "store": "unavailable",
                   "allowlist": "loaded", "draining": true}
    GET /metrics   200, Prometheus text format (`keyscope.observe.metrics`): this process's metrics, or under
                   `--workers N` the sum over the workers, whichever of them answers

No authentication (it tells nothing but the above), never on the traffic port, anything else 404, methods other
than GET and HEAD 405. A pure ASGI app, served by a uvicorn server of its own inside each gateway process,
on the gateway's event loop, so that readiness is that process's own.

The drain, as Kong's: the first SIGTERM fails readiness at once while the gateway keeps serving traffic for
`--drain-seconds`, so that load balancers stop sending; then uvicorn's own shutdown runs (it stops accepting,
finishes what is in flight, closes the store). A second SIGTERM or SIGINT during the drain starts that
shutdown at once; SIGINT alone (Ctrl-C) does not wait either, it only fails readiness on its way out.

How it is wired (`keyscope.serve.server`): `watch()` is uvicorn's `callback_notify`, which its main loop calls right
after start-up and then every second, in every gateway process (one, or each of `--workers N`). The first call
opens the listener (`--workers N`: each worker binds it with SO_REUSEPORT, so the kernel spreads the probes);
each call checks that SIGTERM and SIGINT still go through the drain, and wraps whatever handler is installed
(uvicorn's `handle_exit`, or what wraps it) when they do not.

Under `--workers N` (`supervise()`, uvicorn's Multiprocess supervisor as `Supervisor`) the metrics are summed over
the workers through a directory of files the supervisor makes before they start (`metrics.shared_directory()`):
each `watch()` writes what this worker counted since the last one (`metrics.update`), the first SIGTERM or
SIGINT makes it write its counts as they come (`metrics.write_through`, on the event loop), and the supervisor
drops the gauges of each worker that is gone (`metrics.forget`). With --admin-listen the web interface runs in
the supervising process beside them, as it does without a status listener (`keyscope.serve.web`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from keyscope.core.settings import Settings
from keyscope.core.settings_option import listen_address
from keyscope.core.types import Receive, Scope, Send
from keyscope.observe import metrics
from keyscope.serve import web
from keyscope.serve.sockets import listen_socket

log = logging.getLogger("uvicorn.error")  # configured by uvicorn.Config, so the lines look like uvicorn's own

STORE_TIMEOUT = 1.0
"""Seconds the store has to answer readiness's query."""
NOTIFY_SECONDS = 1
"""How often uvicorn calls `watch()` (uvicorn's `timeout_notify`)."""

STATUS_OPTIONS: dict[str, Any] = {
    "lifespan": "off",
    "access_log": False,
    "proxy_headers": False,
    "server_header": False,
    "log_config": None,  # the gateway's uvicorn has configured logging already: leave it as it is
    "timeout_graceful_shutdown": 1,
}

_JSON = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


async def store_state(store: Any, timeout: float = STORE_TIMEOUT) -> str:
    """"ok" when the store answers a cheap query in time (and a SQLite file is still where it was opened)."""
    try:
        await asyncio.wait_for(store.revision(), timeout)
    except Exception:  # the store's errors, its driver's, a timeout: all mean "not now"
        return "unavailable"
    path = getattr(store, "path", None)  # SQLite: an open file that was removed still answers, for nobody else
    if isinstance(path, str) and not os.path.exists(path):
        return "unavailable"
    return "ok"


async def readiness(gateway: Any) -> dict[str, Any]:
    store = await store_state(gateway.store)
    allowlist = "loaded" if getattr(gateway.checks, "matcher", None) is not None else "missing"
    draining = bool(getattr(gateway, "draining", False))
    ready = store == "ok" and allowlist == "loaded" and not draining
    return {"ready": ready, "store": store, "allowlist": allowlist, "draining": draining}


class StatusApp:
    """The ASGI app of the status listener, for one gateway."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        path = scope["path"]
        if path not in ("/healthz", "/readyz", "/metrics"):
            await _answer(send, 404, {"error": "not found"})
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _answer(send, 405, {"error": "method not allowed"}, [(b"allow", b"GET, HEAD")])
            return
        if path == "/healthz":
            await _answer(send, 200, {"status": "ok"})
            return
        if path == "/metrics":
            body = metrics.render(self.gateway)
            headers = [(b"content-type", metrics.CONTENT_TYPE.encode()), (b"cache-control", b"no-store"),
                       (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        state = await readiness(self.gateway)
        await _answer(send, 200 if state["ready"] else 503, state)


async def _answer(send: Send, status: int, doc: dict[str, Any], extra: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
    body = json.dumps(doc).encode()
    headers = [*_JSON, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Status:
    """The status listener and the drain of one gateway process."""

    def __init__(self, gateway: Any, settings: Settings) -> None:
        assert settings.status_listen is not None
        self.gateway = gateway
        self.address = listen_address(settings.status_listen)
        self.share = settings.workers > 1
        self.drain_seconds = settings.drain_seconds
        self.server: uvicorn.Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.draining = False
        self.finished = False
        self._mine: dict[int, Callable[[int, Any], None]] = {}

    async def watch(self) -> None:
        if self.server is None:
            await self._start()
        self._wrap_signals()
        if self.share:
            metrics.update(self.gateway)  # written to this worker's files, where the others' scrapes read it

    async def _start(self) -> None:
        self.loop = asyncio.get_running_loop()
        host, port = self.address
        try:
            sock = listen_socket(host, port, share=self.share)
        except OSError as exc:
            log.error("cannot listen on %s:%d (status-listen): %s", host, port, exc.strerror or exc)
            self.server = uvicorn.Server(uvicorn.Config(StatusApp(self.gateway), **STATUS_OPTIONS))  # not again
            return
        config = uvicorn.Config(StatusApp(self.gateway), **STATUS_OPTIONS)
        config.load()
        server = uvicorn.Server(config)
        # Only the listener: no signal handlers, main loop or log lines of its own. It answers (503 from the
        # first SIGTERM on) until the process exits, so probes never meet a closed port while the gateway drains.
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self.server = server
        shown = f"[{host}]" if ":" in host else host
        log.info("Status on http://%s:%d (/healthz, /readyz, /metrics)", shown, sock.getsockname()[1])

    def _wrap_signals(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            current = signal.getsignal(signum)
            if current is self._mine.get(signum) or not callable(current):
                continue
            self._mine[signum] = self._handler(current)
            signal.signal(signum, self._mine[signum])

    def _handler(self, previous: Callable[[int, Any], Any]) -> Callable[[int, Any], None]:
        def on_signal(signum: int, frame: Any) -> None:
            self.gateway.draining = True
            if self.loop is not None and not self.draining:  # --workers N: counts written as made from now on
                self.loop.call_soon_threadsafe(metrics.write_through)
            if signum == signal.SIGTERM and not self.draining and self.drain_seconds > 0:
                self.draining = True
                log.info("Draining for %g s: readiness fails, traffic is still served", self.drain_seconds)
                assert self.loop is not None
                self.loop.call_soon_threadsafe(self._schedule, previous, signum)
                return
            self.draining = True
            self._finish(previous, signum, frame)

        return on_signal

    def _schedule(self, previous: Callable[[int, Any], Any], signum: int) -> None:
        if not self.finished:
            assert self.loop is not None
            self.timer = self.loop.call_later(self.drain_seconds, self._finish, previous, signum, None)

    def _finish(self, previous: Callable[[int, Any], Any], signum: int, frame: Any) -> None:
        """uvicorn's shutdown from here on (what a signal would have started without the drain)."""
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        previous(signum, frame)


_current: Status | None = None
"""This process's status listener (one gateway per process under `keyscope serve`)."""


def attach(gateway: Any, settings: Settings) -> None:
    """Called by `keyscope.serve.server` where the gateway is built, in the process that will serve it."""
    global _current
    gateway.draining = False
    _current = Status(gateway, settings)
    metrics.enable(settings.workers)


async def watch() -> None:
    """uvicorn's `callback_notify`: start the listener once, keep the signals going through the drain."""
    if _current is not None:
        await _current.watch()


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor (`--workers N` with --status-listen), run inside `metrics.shared_directory()`:
    after each of its checks (every half second) the gauges of the workers that are gone are dropped, whether
    one died and was replaced or was retired by SIGHUP or SIGTTOU. Their counts stay in the sums."""

    def __init__(self, config: uvicorn.Config, sockets: list[Any], directory: str) -> None:
        super().__init__(config, sockets)
        self.directory = directory

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        self.forget_dead()

    def forget_dead(self) -> None:
        live = [worker.pid for worker in self.processes if worker.process.is_alive()]
        for pid in metrics.forget(self.directory, live):
            log.debug("metrics: worker [%d] is gone: its gauges are dropped", pid)


def supervise(config: uvicorn.Config, sockets: list[Any], settings: Settings) -> None:
    """Run the workers of `config` until stopped, their metrics in a directory of this run's that is gone after.
    With --admin-listen the web interface runs on a thread of this process meanwhile, as `keyscope.serve.web`
    runs it beside workers (a store of its own; the workers hear of its writes through the store's revision)."""
    interface = thread = None
    if settings.admin_listen is not None:
        host, port = listen_address(settings.admin_listen)
        try:
            sock = listen_socket(host, port)
        except OSError as exc:
            print(f"keyscope serve: cannot listen on {host}:{port} (admin-listen): {exc.strerror or exc}",
                  file=sys.stderr)
            sys.exit(2)
        interface = uvicorn.Server(uvicorn.Config(web.web_app(settings), lifespan="on", **web.WEB_OPTIONS))
        config.configure_logging()  # each uvicorn.Config applies its logging: the gateway's (--log-format) wins
        web._announce(sock)
        thread = threading.Thread(target=interface.run, kwargs={"sockets": [sock]}, name="keyscope-web", daemon=True)
        thread.start()
    try:
        with metrics.shared_directory() as directory:  # made before the workers start: they inherit its name
            Supervisor(config, sockets, directory).run()
    finally:
        if interface is not None and thread is not None:
            interface.should_exit = True
            thread.join(timeout=15)
