"""The management API as the CLI's commands see it: a call through a transport, in-process or remote.

Each command is a request to the admin ASGI app, called directly (no server, no network) with a one-time admin
token, or, with `--url` and `--token`, sent to a running gateway (keyscope.cli.remote): the transport is the
only difference. An answer outside 2xx raises `Refused`, carrying what its body says (core.errors.describe).
"""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from keyscope.control import admin
from keyscope.core.errors import ErrorText, describe
from keyscope.core.types import ASGIApp


class Refused(Exception):
    """The API answered with an error: the CLI prints its text and exits 1."""

    def __init__(
        self,
        error: ErrorText,
        hint: str | None = None,
        message: str | None = None,
        flags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error.status)
        self.error = error
        self.hint = hint
        self.message = message  # the web interface's wording for this refusal, in place of the API's headline
        self.flags = flags or {}  # API field (or its prefix, `platform[1]`) -> the option that gave it

    @property
    def status(self) -> int:
        return self.error.status


Transport = Callable[[str, str, Any, dict[str, str]], Awaitable[tuple[int, bytes]]]
"""(method, path, JSON body or None, query) -> (status, body bytes): the one thing in-process and remote differ in."""


def in_process(app: ASGIApp, token: str) -> Transport:
    """The admin app, called in-process as admin with a token made for this one run; the audit trail names
    the caller `cli:<OS user>` (`principal()`)."""
    who = principal()

    async def transport(method: str, path: str, body: Any, query: dict[str, str]) -> tuple[int, bytes]:
        status, _, raw = await admin.call(app, method, path, body, query, token, principal=who)
        return status, raw

    return transport


def principal() -> str:
    """`cli:<login name>` as the OS tells it (`getpass.getuser`: $LOGNAME, $USER, ... or the password
    database), `cli` when it cannot. Whoever runs the in-process CLI can open the store anyway: this says
    who ran it, it proves nothing."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError, ImportError):  # no such variable, no password entry (a bare container), no pwd
        return "cli"
    user = "".join(char for char in user if char.isprintable() and not char.isspace())[:64]
    return f"cli:{user}" if user else "cli"


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Api:
    """The management API through a transport: in-process (`in_process`) or a gateway's (`remote.remote`)."""

    transport: Transport

    async def __call__(
        self, method: str, path: str, query: dict[str, str | None] | None = None, body: object = None
    ) -> Any:
        """The answer's body (parsed JSON, the text of a non-JSON body, or None when empty); any status outside
        2xx raises Refused."""
        given = {name: value for name, value in (query or {}).items() if value is not None}
        status, raw = await self.transport(method, path, body, given)
        if not 200 <= status < 300:
            raise Refused(describe(status, raw))
        return _decode(raw)


Command = Callable[[Api, argparse.Namespace], Awaitable[None]]
"""A management command: its arguments turned into calls to the API, and the answers printed."""


async def worded(
    call: Awaitable[Any], messages: dict[int, str], flags: dict[str, str] | None = None
) -> Any:
    """`call`'s answer; a refusal with a status in `messages` is told in the web interface's words, and
    each refused field names the option it came from (`flags`)."""
    try:
        return await call
    except Refused as refusal:
        raise Refused(refusal.error, refusal.hint, messages.get(refusal.status, refusal.message), flags) from None
