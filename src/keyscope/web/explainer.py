"""The Endpoints tab: the allowlist grouped by solution and channel, and the explain form.

The form hands its request to `keyscope.gateway.explain`, which runs the gateway's own checks without forwarding;
a pasted secret is used for that one explanation and never written back into the page.
"""

from __future__ import annotations

from itertools import groupby

from starlette.requests import Request
from starlette.responses import Response

from keyscope.allowlist.table import METHODS
from keyscope.core.models import ApiKey
from keyscope.gateway import explain
from keyscope.web.ui import Handler, Ui

KEY_CHOICES = 1000
CONTENT_TYPES = ("application/json", "application/x-www-form-urlencoded", "multipart/form-data", "text/plain")


async def _keys(ui: Ui) -> list[ApiKey]:
    found = await ui.store.list_keys(0, KEY_CHOICES)
    return found.items


async def page(ui: Ui, request: Request, form: dict[str, str] | None = None,
               trace: explain.Explanation | None = None, error: str | None = None) -> Response:
    ordered = sorted(ui.endpoints, key=lambda e: (e.group, e.path, e.method))
    groups = [(group, list(items)) for group, items in groupby(ordered, key=lambda e: e.group)]
    status = 400 if error else 200
    return ui.render(request, "endpoints.html", status, groups=groups, keys=await _keys(ui), form=form or {},
                     trace=trace, error=error, methods=sorted(METHODS), content_types=CONTENT_TYPES)


async def run(ui: Ui, request: Request) -> Response:
    form = dict(request.state.form)
    secret = form.pop("secret", "").strip()
    key_id = form.get("key_id", "")
    if bool(secret) == bool(key_id):
        return await page(ui, request, form, error="Choose a key or paste a secret (not both).")
    method = form.get("method", "")
    target = form.get("target", "")
    if method not in METHODS or not target:
        return await page(ui, request, form, error="Give a method and a request target such as /sms/1/logs.")
    body = form.get("body", "").encode("utf-8")
    try:
        trace = await explain.explain(
            ui.store,
            ui.endpoints,
            method,
            target,
            secret=secret or None,
            key_id=key_id or None,
            body=body,
            content_type=form.get("content_type") or None,
            client=form.get("client") or None,
            trusted_proxies=ui.trusted_proxies,
            max_body_size=ui.max_body_size,
            limits=ui.limits,
        )
    except explain.KeyNotFound:
        return await page(ui, request, form, error=f"There is no key {key_id!r}.")
    return await page(ui, request, form, trace)


async def show(ui: Ui, request: Request) -> Response:
    return await page(ui, request)


ROUTES: list[tuple[str, str, Handler]] = [
    ("/endpoints", "GET", show),
    ("/endpoints/explain", "POST", run),
]
