"""The `keyscope --url URL --token T` transport: the management API of a running gateway, over HTTP.

The CLI builds the same requests and prints the same results either way (keyscope.cli.api); only this function
differs from the in-process transport. It uses the standard library, so managing keys needs no web client.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from keyscope import __version__

TIMEOUT = 30.0
"""Seconds to wait for the gateway to connect, and then for each read."""

Transport = Callable[[str, str, Any, Mapping[str, str]], Awaitable[tuple[int, bytes]]]


class RemoteProblem(Exception):
    """The gateway cannot be reached, or did not answer as a keyscope gateway: one line, exit `status`."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def check_url(url: str) -> str | None:
    """Why `url` cannot be a gateway's address, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"--url {url!r}: expected http://HOST:PORT or https://HOST:PORT"
    if parts.query or parts.fragment:
        return f"--url {url!r}: give the gateway's address without a query or fragment"
    try:
        parts.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError:
        return f"--url {url!r}: the port is not a number"
    return None


def remote(url: str, token: str, shown: str) -> Transport:
    """A transport to the gateway at `url` (a base path is kept: `https://host/keyscope`), as `token`'s bearer.

    `shown` is the URL as messages spell it (without a password)."""
    base = url.rstrip("/")

    def send(method: str, path: str, body: Any, query: Mapping[str, str]) -> tuple[int, bytes]:
        target = base + quote(path, safe="/")
        if query:
            target += "?" + urlencode(query)
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "User-Agent": f"keyscope-cli/{__version__}",
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(target, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 -- http(s) only
                status, content_type, raw = response.status, response.headers.get("Content-Type", ""), response.read()
        except urllib.error.HTTPError as error:
            status, content_type, raw = error.code, error.headers.get("Content-Type", ""), error.read()
        except urllib.error.URLError as error:
            raise unreachable(shown, error.reason) from None
        except (OSError, http.client.HTTPException) as error:
            raise unreachable(shown, error) from None
        if status == 401:
            raise RemoteProblem(
                f"the gateway at {shown} refused the token (HTTP 401): --token must be its admin token", 1
            )
        if raw and "json" not in content_type.lower() and 200 <= status < 300:
            what = content_type or "no Content-Type"
            raise RemoteProblem(f"{shown} did not answer as a keyscope gateway (HTTP {status}, {what})")
        return status, raw

    async def transport(method: str, path: str, body: Any, query: Mapping[str, str]) -> tuple[int, bytes]:
        return await asyncio.to_thread(send, method, path, body, dict(query))

    return transport


def unreachable(shown: str, reason: object) -> RemoteProblem:
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return RemoteProblem(f"the gateway at {shown} did not answer within {TIMEOUT:g} s")
    if isinstance(reason, ConnectionRefusedError):
        return RemoteProblem(f"cannot reach the gateway at {shown}: connection refused")
    if isinstance(reason, socket.gaierror):
        return RemoteProblem(f"cannot reach the gateway at {shown}: unknown host {urlsplit(shown).hostname!r}")
    if isinstance(reason, ssl.SSLError):
        return RemoteProblem(f"cannot reach the gateway at {shown}: TLS: {getattr(reason, 'reason', None) or reason}")
    if isinstance(reason, http.client.RemoteDisconnected):
        return RemoteProblem(f"cannot reach the gateway at {shown}: it closed the connection without answering")
    text = " ".join(str(getattr(reason, "strerror", None) or reason).split()) or type(reason).__name__
    return RemoteProblem(f"cannot reach the gateway at {shown}: {text}")
