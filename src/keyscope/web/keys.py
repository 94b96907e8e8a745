"""The API keys tab: list, create (the secret shown once), link and re-link, settings, revoke, re-enable.

Forms are turned into the management API's documents and sent to it; its answer decides. The one rule that
lives here is a question of intent, not of validity: a key with no links may call every endpoint, so a form
that names no link must also say "primary" explicitly, so that an emptied form never widens a key by accident.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from keyscope.core.models import ApiKey
from keyscope.store.base import NotFound
from keyscope.web.changes import last_changes
from keyscope.web.records import limits_text, page_number, rate_limits_from
from keyscope.web.ui import SECURITY_HEADERS, Answer, Handler, Ui, redirect

PAGE_SIZE = 50
BLANK_ROWS = 2
_ROW = re.compile(r"(?:app|ent|action)_(\d{1,3})")


def links_from(form: dict[str, str]) -> list[dict[str, Any]]:
    """The link rows of a form (`app_N`, `ent_N`, `action_N`), in order, blank rows left out."""
    rows = sorted({int(match.group(1)) for name in form if (match := _ROW.fullmatch(name))})
    links = []
    for row in rows:
        app, ent, action = (form.get(f"{part}_{row}", "") for part in ("app", "ent", "action"))
        if app or ent or action:
            links.append({"applicationId": app or None, "entityId": ent or None, "action": action or None})
    return links


def split_ips(text: str) -> list[str]:
    return [part for part in re.split(r"[\s,]+", text) if part]


def _intent_problem(links: list[dict[str, Any]], primary: bool) -> Answer | None:
    if not links and not primary:
        message = "Name an application or an entity, or tick 'primary key' for a key that may call every endpoint."
        return Answer(400, None, message, {"platform": message})
    if links and primary:
        message = "A primary key has no links: clear the links or untick 'primary key'."
        return Answer(400, None, message, {"platform": message})
    return None


async def list_page(ui: Ui, request: Request, form: dict[str, str] | None = None,
                    answer: Answer | None = None) -> Response:
    found = await ui.store.list_keys(page_number(request.query_params.get("page")), PAGE_SIZE)
    status = answer.status if answer is not None else 200
    return ui.render(request, "keys.html", status, found=found, form=form or {}, answer=answer)


async def create(ui: Ui, request: Request) -> Response:
    form = request.state.form
    links = links_from(form)
    problem = _intent_problem(links, form.get("primary") == "on")
    if problem is not None:
        return await list_page(ui, request, form, problem)
    doc: dict[str, Any] = {"name": form.get("name", ""), "platform": links}
    if form.get("allowedIPs", "").strip():
        doc["allowedIPs"] = split_ips(form["allowedIPs"])
    limits = rate_limits_from(form.get("rateLimits", ""))
    if isinstance(limits, Answer):
        return await list_page(ui, request, form, limits)
    if limits:
        doc["rateLimits"] = limits
    if form.get("shadow") == "on":
        doc["enforce"] = False
    for name in ("validFrom", "validTo"):
        if form.get(name, "").strip():
            doc[name] = form[name].strip()
    answer = await ui.api("POST", "/settings/2/api-keys", doc, by=request)
    if not answer.ok:
        return await list_page(ui, request, form, answer)
    created = answer.doc
    response = ui.render(request, "key_created.html", key=created, secret=created["apiKeySecret"])
    response.headers.update(SECURITY_HEADERS)  # no-store: the page holds the only copy of the secret
    return response


async def show(ui: Ui, request: Request, form: dict[str, str] | None = None, answer: Answer | None = None) -> Response:
    ident = request.query_params.get("id") or (form or {}).get("id", "")
    try:
        key: ApiKey = await ui.store.get_key(ident)
    except NotFound:
        return ui.render(request, "error.html", 404, message=f"There is no key {ident!r}.")
    rows = [
        {"app": entry.application_id or "", "ent": entry.entity_id or "", "action": entry.action or ""}
        for entry in key.platform
    ] + [{"app": "", "ent": "", "action": ""}] * BLANK_ROWS
    if form is not None and answer is not None and form.get("form") == "links":
        rows = [{"app": r["applicationId"] or "", "ent": r["entityId"] or "", "action": r["action"] or ""}
                for r in links_from(form)] + [{"app": "", "ent": "", "action": ""}] * BLANK_ROWS
    status = answer.status if answer is not None else 200
    return ui.render(request, "key.html", status, key=key, rows=rows, form=form or {}, answer=answer,
                     limits=limits_text(key.rate_limits),
                     changes=await last_changes(ui.store, "key", key.id))


async def _update(ui: Ui, request: Request, doc: dict[str, Any], done: str) -> Response:
    form = request.state.form
    ident = form.get("id", "")
    answer = await ui.api("PUT", f"/settings/2/api-keys/{ident}", doc, by=request)
    if not answer.ok:
        return await show(ui, request, form, answer)
    request.state.session.flash.append(done)
    return redirect("/keys/show", id=ident)


async def relink(ui: Ui, request: Request) -> Response:
    form = request.state.form
    links = links_from(form)
    problem = _intent_problem(links, form.get("primary") == "on")
    if problem is not None:
        return await show(ui, request, form, problem)
    doc: dict[str, Any] = {"platform": links}
    done = "Saved the key's links."
    if form.get("enable") == "on":
        doc["enabled"] = True
        done += " The key is enabled."
    return await _update(ui, request, doc, done)


async def settings(ui: Ui, request: Request) -> Response:
    form = request.state.form
    doc: dict[str, Any] = {"name": form.get("name", ""), "allowedIPs": split_ips(form.get("allowedIPs", ""))}
    for name in ("validFrom", "validTo"):
        if form.get(name, "").strip():
            doc[name] = form[name].strip()
    limits = rate_limits_from(form.get("rateLimits", ""))
    if isinstance(limits, Answer):
        return await show(ui, request, form, limits)
    doc["rateLimits"] = limits
    doc["enforce"] = form.get("shadow") != "on"
    return await _update(ui, request, doc, "Saved the key's settings.")


async def revoke(ui: Ui, request: Request) -> Response:
    return await _update(ui, request, {"enabled": False}, "The key is revoked: the gateway refuses it from now on.")


async def enable(ui: Ui, request: Request) -> Response:
    return await _update(ui, request, {"enabled": True}, "The key is enabled again.")


ROUTES: list[tuple[str, str, Handler]] = [
    ("/keys", "GET", list_page),
    ("/keys", "POST", create),
    ("/keys/show", "GET", show),
    ("/keys/links", "POST", relink),
    ("/keys/settings", "POST", settings),
    ("/keys/revoke", "POST", revoke),
    ("/keys/enable", "POST", enable),
]
