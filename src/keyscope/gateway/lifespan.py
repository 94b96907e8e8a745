"""The ASGI lifespan of keyscope's servers (the gateway, the authorizer): one way to start, stop and end quietly.

A start-up failure is one error line and `lifespan.startup.failed`. A forced exit (a second Ctrl-C) skips
`lifespan.shutdown`, and the event loop's teardown cancels this task instead: uvicorn would print the
CancelledError as a traceback and what is open would stay open, so it is closed all the same, quietly. Either
way the access lines are written last: uvicorn sends `lifespan.shutdown` once the drain is over, so every
answered request has its line by then, and uvicorn re-raises the signal afterwards, which may kill the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from keyscope.core.types import Receive, Send
from keyscope.observe import accesslog


async def run(
    receive: Receive, send: Send, startup: Callable[[], Awaitable[None]], shutdown: Callable[[], Awaitable[None]],
    logger: logging.Logger,
) -> None:
    await receive()  # lifespan.startup
    try:
        await startup()
    except Exception as exc:  # one line, whatever the store's driver raised
        logger.error("start-up failed: %s", exc)
        await send({"type": "lifespan.startup.failed", "message": str(exc)})
        return
    await send({"type": "lifespan.startup.complete"})
    try:
        await receive()  # lifespan.shutdown
    except asyncio.CancelledError:
        await _stop(shutdown)
        return
    await _stop(shutdown)
    await send({"type": "lifespan.shutdown.complete"})


async def _stop(shutdown: Callable[[], Awaitable[None]]) -> None:
    try:
        await shutdown()
    finally:
        accesslog.flush()
