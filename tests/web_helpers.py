"""The web interface in-process over a real store: the client, the clock the sessions read, form helpers.

The `web` and `signed_in` fixtures (conftest.py) hand tests a `Web`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import unescape

import httpx

from keyscope.allowlist.table import load as load_endpoints
from keyscope.store import Store
from keyscope.web import create_web_app

TOKEN = "web-admin-token-0123456789"
IDLE = 600.0
ENDPOINTS = load_endpoints()



class Clock:
    """The sessions' time source, moved by the test instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Web:
    client: httpx.AsyncClient
    clock: Clock
    store: Store
    csrf: str = ""

    async def signin(self) -> str:
        response = await self.client.post("/signin", data={"token": TOKEN})
        assert response.status_code == 303
        self.csrf = csrf_of((await self.client.get("/applications")).text)
        return self.csrf

    async def post(self, path: str, **fields: str) -> httpx.Response:
        return await self.client.post(path, data={"csrf": self.csrf, **fields})


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def texts(html: str, css_class: str) -> list[str]:
    return [unescape(t).strip() for t in re.findall(rf'class="{css_class}"[^>]*>([^<]*)', html)]


def secret_of(html: str) -> str:
    found = re.search(r'id="secret" class="secret" readonly value="([^"]+)"', html)
    assert found
    return found.group(1)


def make_client(store: Store, clock: Clock, base_url: str = "http://testserver") -> httpx.AsyncClient:
    app = create_web_app(store, admin_token=TOKEN, endpoints=ENDPOINTS, idle_timeout=IDLE, clock=clock)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)
