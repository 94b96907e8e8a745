"""The Applications and Entities tabs: lists with search, create, detail, alias edit, delete, associations.

Both kinds share one set of handlers, parametrised by `Kind`. Deleting first shows what the store's cascade
will remove, computed from the same store (associations, the key links naming the id, the keys left with no
link, which the cascade disables); the delete itself is the management API's, and its report is what the
page then says happened. An application's page also sets its rate limits (every key linked to it spends from
them together).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from keyscope.core import ratelimits
from keyscope.core.models import CHANNELS, RESOURCE_TYPES, ApiKey, Association, AssociationFilter, PlatformEntry
from keyscope.store.base import NotFound
from keyscope.web.changes import last_changes
from keyscope.web.ui import Answer, Handler, Ui, redirect

PAGE_SIZE = 20
PREVIEW_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class Kind:
    noun: str
    plural: str
    base: str
    api: str
    id_field: str
    name_field: str
    other: str  # the paired kind's id field

    def ident(self, entry: PlatformEntry | Association) -> str | None:
        return entry.application_id if self.id_field == "applicationId" else entry.entity_id

    def paired(self, entry: PlatformEntry | Association) -> str | None:
        return entry.entity_id if self.id_field == "applicationId" else entry.application_id


APPS = Kind("application", "applications", "/applications", "/provisioning/1/applications",
            "applicationId", "applicationName", "entityId")
ENTITIES = Kind("entity", "entities", "/entities", "/provisioning/1/entities",
                "entityId", "entityName", "applicationId")


def rate_limits_from(text: str) -> list[dict[str, Any]] | Answer:
    """The rate limits of a form's field, one `100/s` (or `5000/day`) per line or comma; a 400 naming the field
    for one that is not. Empty: none."""
    limits = []
    for part in (part.strip() for part in re.split(r"[\n,]+", text)):
        if part:
            try:
                limits.append(ratelimits.parse(part).to_doc())
            except ValueError as exc:
                return Answer(400, None, str(exc), {"rateLimits": str(exc)})
    return limits


def limits_text(limits: Any) -> str:
    """Rate limits as the form shows them: `100/second`, one per line."""
    return "\n".join(str(limit) for limit in limits)


def page_number(raw: str | None) -> int:
    return int(raw) if raw and raw.isdigit() and len(raw) < 8 else 0


async def _list(ui: Ui, kind: Kind, search: str | None, page: int) -> Any:
    if kind is APPS:
        return await ui.store.list_applications(page, PAGE_SIZE, search)
    return await ui.store.list_entities(page, PAGE_SIZE, search)


async def list_page(ui: Ui, request: Request, kind: Kind, form: dict[str, str] | None = None,
                    answer: Answer | None = None) -> Response:
    search = request.query_params.get("q") or None
    found = await _list(ui, kind, search, page_number(request.query_params.get("page")))
    rows = [_row(kind, item) for item in found.items]
    status = answer.status if answer is not None else 200
    return ui.render(request, "records.html", status, kind=kind, rows=rows, q=search or "", found=found,
                     form=form or {}, answer=answer)


def _row(kind: Kind, item: Any) -> tuple[str, str | None]:
    if kind is APPS:
        return item.application_id, item.application_name
    return item.entity_id, item.entity_name


async def create(ui: Ui, request: Request, kind: Kind) -> Response:
    form = request.state.form
    ident = form.get(kind.id_field, "")
    doc = {kind.id_field: ident, kind.name_field: form.get(kind.name_field) or None}
    answer = await ui.api("POST", kind.api, doc, by=request)
    if not answer.ok:
        if answer.status == 409:
            answer = Answer(409, answer.doc, f"An {kind.noun} with the id {ident!r} already exists.", answer.problems)
        return await list_page(ui, request, kind, form, answer)
    request.state.session.flash.append(f"Created {kind.noun} {ident}.")
    return redirect(f"{kind.base}/show", id=ident)


async def _record(ui: Ui, kind: Kind, ident: str) -> tuple[str, str | None]:
    if kind is APPS:
        app = await ui.store.get_application(ident)
        return app.application_id, app.application_name
    entity = await ui.store.get_entity(ident)
    return entity.entity_id, entity.entity_name


async def _associations(ui: Ui, kind: Kind, ident: str) -> tuple[list[Association], int]:
    wanted = AssociationFilter(**{"application_id" if kind is APPS else "entity_id": ident})
    found = await ui.store.list_associations(wanted, 0, PREVIEW_LIMIT)
    return found.items, found.total


async def _keys(ui: Ui, kind: Kind, ident: str) -> list[ApiKey]:
    if kind is APPS:
        return await ui.store.keys_for_application(ident)
    return await ui.store.keys_for_entity(ident)


async def show(ui: Ui, request: Request, kind: Kind, form: dict[str, str] | None = None,
               answer: Answer | None = None) -> Response:
    ident = request.query_params.get("id") or (form or {}).get(kind.id_field) or (form or {}).get("id", "")
    try:
        record_id, name = await _record(ui, kind, ident)
    except NotFound:
        return ui.render(request, "error.html", 404, message=f"There is no {kind.noun} {ident!r}.")
    associations, total = await _associations(ui, kind, record_id)
    keys = await _keys(ui, kind, record_id)
    paired: dict[str, list[str]] = {}
    for association in associations:
        other = kind.paired(association)
        if other is not None:
            paired.setdefault(other, []).append(
                f"association {association.resource_type}/{association.channel}/{association.resource_id}"
            )
    for key in keys:
        for entry in key.platform:
            other = kind.paired(entry)
            if kind.ident(entry) == record_id and other is not None:
                paired.setdefault(other, []).append(f"key {key.name!r}")
    status = answer.status if answer is not None else 200
    limits = (await ui.store.get_application(record_id)).rate_limits if kind is APPS else ()
    return ui.render(request, "record.html", status, kind=kind, ident=record_id, name=name,
                     rate_limits=limits, limits=limits_text(limits),
                     associations=associations, total=total, keys=keys, paired=sorted(paired.items()),
                     form=form or {}, answer=answer, resource_types=RESOURCE_TYPES, channels=CHANNELS,
                     changes=await last_changes(ui.store, kind.noun, record_id))


async def rename(ui: Ui, request: Request, kind: Kind) -> Response:
    form = request.state.form
    ident = form.get("id", "")
    answer = await ui.api("PUT", f"{kind.api}/{ident}", {kind.name_field: form.get(kind.name_field) or None},
                          by=request)
    if not answer.ok:
        return await show(ui, request, kind, form, answer)
    request.state.session.flash.append(f"Saved the alias of {kind.noun} {ident}.")
    return redirect(f"{kind.base}/show", id=ident)


async def limit(ui: Ui, request: Request, kind: Kind) -> Response:
    """An application's rate limits, replaced (the alias is sent back as it is: a PUT sets it too)."""
    form = request.state.form
    ident = form.get("id", "")
    limits = rate_limits_from(form.get("rateLimits", ""))
    if isinstance(limits, Answer):
        return await show(ui, request, kind, form, limits)
    try:
        _, name = await _record(ui, kind, ident)
    except NotFound:
        return ui.render(request, "error.html", 404, message=f"There is no {kind.noun} {ident!r}.")
    answer = await ui.api("PUT", f"{kind.api}/{ident}", {kind.name_field: name, "rateLimits": limits}, by=request)
    if not answer.ok:
        return await show(ui, request, kind, form, answer)
    request.state.session.flash.append(f"Saved the rate limits of {kind.noun} {ident}.")
    return redirect(f"{kind.base}/show", id=ident)


@dataclass(frozen=True, slots=True)
class KeyLoss:
    """What deleting the id does to one key: the links it loses and whether it is left with none."""

    key: ApiKey
    removed: list[PlatformEntry]
    disabled: bool


async def confirm_delete(ui: Ui, request: Request, kind: Kind, answer: Answer | None = None) -> Response:
    ident = request.query_params.get("id") or getattr(request.state, "form", {}).get("id", "")
    try:
        record_id, name = await _record(ui, kind, ident)
    except NotFound:
        return ui.render(request, "error.html", 404, message=f"There is no {kind.noun} {ident!r}.")
    associations, total = await _associations(ui, kind, record_id)
    losses = []
    for key in await _keys(ui, kind, record_id):
        removed = [entry for entry in key.platform if kind.ident(entry) == record_id]
        losses.append(KeyLoss(key, removed, len(removed) == len(key.platform)))
    status = answer.status if answer is not None else 200
    return ui.render(request, "confirm_delete.html", status, kind=kind, ident=record_id, name=name,
                     associations=associations, total=total, losses=losses, answer=answer)


async def delete(ui: Ui, request: Request, kind: Kind) -> Response:
    ident = request.state.form.get("id", "")
    answer = await ui.api("DELETE", f"{kind.api}/{ident}", by=request)
    if not answer.ok:
        return await confirm_delete(ui, request, kind, answer)
    report = answer.doc
    disabled = report["keysDisabled"]
    request.state.session.flash.append(
        f"Deleted {kind.noun} {ident}: {report['associationsRemoved']} association(s) and "
        f"{report['entriesRemoved']} key link(s) removed"
        + (f"; disabled key(s) {', '.join(disabled)}." if disabled else "; no key disabled.")
    )
    return redirect(kind.base)


def _association_doc(form: dict[str, str]) -> dict[str, Any]:
    return {
        "resourceType": form.get("resourceType", ""),
        "channel": form.get("channel", ""),
        "applicationId": form.get("applicationId", ""),
        "entityId": form.get("entityId") or None,
        "resourceId": form.get("resourceId", ""),
    }


async def associate(ui: Ui, request: Request) -> Response:
    form = request.state.form
    answer = await ui.api("POST", "/provisioning/1/associations", _association_doc(form), by=request)
    if not answer.ok:
        if answer.status == 409:
            answer = Answer(409, answer.doc, "This resource is already associated.", answer.problems)
        elif answer.status == 404:
            answer = Answer(404, answer.doc, "The application or entity does not exist.", answer.problems)
        return await show(ui, request, APPS, form, answer)
    request.state.session.flash.append(f"Associated {form.get('resourceType')} {form.get('resourceId')}.")
    return redirect("/applications/show", id=form.get("applicationId"))


async def dissociate(ui: Ui, request: Request) -> Response:
    form = request.state.form
    answer = await ui.api("DELETE", "/provisioning/1/associations", _association_doc(form), by=request)
    if not answer.ok:
        return await show(ui, request, APPS, form, answer)
    removed = f"{form.get('resourceType')} {form.get('resourceId')}"
    request.state.session.flash.append(f"Removed the association of {removed}.")
    return redirect("/applications/show", id=form.get("applicationId"))


def _for(kind: Kind, handler: Any) -> Handler:
    async def bound(ui: Ui, request: Request) -> Response:
        response: Response = await handler(ui, request, kind)
        return response

    return bound


ROUTES: list[tuple[str, str, Handler]] = [
    route
    for kind in (APPS, ENTITIES)
    for route in (
        (kind.base, "GET", _for(kind, list_page)),
        (kind.base, "POST", _for(kind, create)),
        (f"{kind.base}/show", "GET", _for(kind, show)),
        (f"{kind.base}/rename", "POST", _for(kind, rename)),
        *([(f"{kind.base}/limits", "POST", _for(kind, limit))] if kind is APPS else []),
        (f"{kind.base}/delete", "GET", _for(kind, confirm_delete)),
        (f"{kind.base}/delete", "POST", _for(kind, delete)),
    )
] + [
    ("/associations/create", "POST", associate),
    ("/associations/delete", "POST", dissociate),
]
