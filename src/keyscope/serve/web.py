"""`keyscope serve --admin-listen HOST:PORT`: the web interface on a listener of its own, beside the gateway.

With one worker both servers share the process and the event loop: the interface uses the gateway's store and
the same key cache and change hook as the gateway's management API, so an edit takes effect at once. The
interface starts once the gateway has opened the store and stops before the gateway closes it; a signal stops
both. With several workers the interface runs in the supervising process with a store of its own, and the
workers learn of its writes the way they learn of any other (the store's revision).

The listening socket is bound before anything starts, so a taken port stops start-up with one line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette

from keyscope.allowlist.table import load as load_endpoints
from keyscope.core.settings import Settings
from keyscope.core.settings_option import listen_address
from keyscope.core.settings_sources import WORKER_ENV
from keyscope.serve.sockets import listen_socket
from keyscope.store import store_from_url
from keyscope.web.app import create_web_app

log = logging.getLogger("uvicorn.error")  # configured by uvicorn.Config, so the line looks like uvicorn's own

WEB_OPTIONS: dict[str, Any] = {
    "access_log": False,
    "proxy_headers": False,
    "server_header": False,
    # logging is the gateway's (--log-format, --log-level): a second uvicorn.Config must not configure it again
    "log_config": None,
    "timeout_graceful_shutdown": 10,
}


def web_app(settings: Settings, gateway: Any = None) -> Starlette:
    """Beside `gateway` (same process): its store, key cache and change hook. Alone: a store of its own."""
    assert settings.admin_token is not None  # config refuses --admin-listen without a token
    options: dict[str, Any] = {
        "admin_token": settings.admin_token,
        "endpoints": load_endpoints(settings.endpoints),
        "idle_timeout": settings.admin_idle_timeout,
        "trusted_proxies": settings.trusted_proxies,
        "max_body_size": settings.max_body_size,
        "limits": settings.limits(),
    }
    if gateway is not None:
        management = gateway.admin
        return create_web_app(
            gateway.store, authenticator=management.authenticator, on_change=management.on_change, **options
        )
    return create_web_app(store_from_url(settings.store), open_store=True, **options)


def serve_with_web(
    settings: Settings, gateway_options: dict[str, Any], build_app: Callable[[Settings], Any]
) -> None:
    """Run the gateway (`build_app(settings)` with `gateway_options`, as `server.serve` makes them) and the web
    interface until stopped. The gateway is built by the caller's function, so this layer imports no server."""
    assert settings.admin_listen is not None
    host, port = listen_address(settings.admin_listen)
    try:
        sock = listen_socket(host, port)
    except OSError as exc:
        print(f"keyscope serve: cannot listen on {host}:{port} (admin-listen): {exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)
    if settings.workers > 1:
        _beside_workers(settings, gateway_options, sock)
        return
    gateway = build_app(settings)
    main = uvicorn.Server(uvicorn.Config(gateway, **gateway_options))
    web = uvicorn.Server(uvicorn.Config(web_app(settings, gateway), lifespan="off", **WEB_OPTIONS))
    _announce(sock)
    loop_factory = main.config.get_loop_factory()
    runner = asyncio.Runner(loop_factory=loop_factory) if loop_factory else asyncio.Runner()
    with runner:
        runner.run(_together(main, web, sock))


def _announce(sock: socket.socket) -> None:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log.info("Web interface on http://%s:%d (sign in with the admin token)", shown, port)


async def _together(main: uvicorn.Server, web: uvicorn.Server, sock: socket.socket) -> None:
    gateway = asyncio.create_task(main.serve())
    while not main.started:
        if gateway.done():  # start-up failed: the gateway has said why
            sock.close()
            await gateway
            return
        await asyncio.sleep(0.05)
    interface = asyncio.create_task(web.serve(sockets=[sock]))
    await asyncio.wait({gateway, interface}, return_when=asyncio.FIRST_COMPLETED)
    web.should_exit = True
    await interface
    main.should_exit = True
    await gateway


def _beside_workers(settings: Settings, gateway_options: dict[str, Any], sock: socket.socket) -> None:
    os.environ[WORKER_ENV] = settings.to_json()  # as server.serve does for its workers
    web = uvicorn.Server(uvicorn.Config(web_app(settings), lifespan="on", **WEB_OPTIONS))
    _announce(sock)
    thread = threading.Thread(target=web.run, kwargs={"sockets": [sock]}, name="keyscope-web", daemon=True)
    thread.start()
    try:
        uvicorn.run("keyscope.serve.server:worker_app", factory=True, workers=settings.workers, **gateway_options)
    finally:
        web.should_exit = True
        thread.join(timeout=15)
