"""Records out as the platform's JSON documents, so its clients read keyscope's answers unchanged.

A key's secret appears only in the create response; every other rendering of a key shows its prefix.
keyscope's own fields appear only when they say something: `rateLimits` when there are some, `enforce` when it
is false (shadow mode), so that a document without them is the platform's exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from keyscope.core.ratelimits import to_doc as rate_limits_doc
from keyscope.core.models import ApiKey, Application, Association, CascadeReport, Entity, Page, PlatformEntry
from keyscope.documents.fields import format_datetime

T = TypeVar("T")


def render_application(app: Application) -> dict[str, Any]:
    doc: dict[str, Any] = {"applicationId": app.application_id, "applicationName": app.application_name}
    if app.rate_limits:
        doc["rateLimits"] = rate_limits_doc(app.rate_limits)
    return doc


def render_entity(entity: Entity) -> dict[str, Any]:
    return {"entityId": entity.entity_id, "entityName": entity.entity_name}


def render_association(association: Association) -> dict[str, Any]:
    return {
        "resourceType": association.resource_type,
        "channel": association.channel,
        "applicationId": association.application_id,
        "entityId": association.entity_id,
        "resourceId": association.resource_id,
    }


def render_page(page: Page[T], render: Callable[[T], dict[str, Any]]) -> dict[str, Any]:
    return {
        "results": [render(item) for item in page.items],
        "paging": {"page": page.page, "size": page.size, "totalPages": page.total_pages, "totalResults": page.total},
    }


def render_entry(entry: PlatformEntry) -> dict[str, Any]:
    return {
        "key": entry.key,
        "applicationId": entry.application_id,
        "entityId": entry.entity_id,
        "action": entry.action,
    }


def render_key(key: ApiKey, secret: str | None = None) -> dict[str, Any]:
    """The secret appears only when given, which only the create response does."""
    doc: dict[str, Any] = {"id": key.id}
    if secret is not None:
        doc["apiKeySecret"] = secret
    doc.update(
        name=key.name,
        prefix=key.prefix,
        allowedIPs=list(key.allowed_ips),
        validFrom=format_datetime(key.valid_from),
        validTo=format_datetime(key.valid_to),
        enabled=key.enabled,
        platform=[render_entry(entry) for entry in key.platform],
        lastUsed=format_datetime(key.last_used) if key.last_used is not None else None,
    )
    if key.rate_limits:
        doc["rateLimits"] = rate_limits_doc(key.rate_limits)
    if not key.enforce:
        doc["enforce"] = False
    return doc


def render_key_page(page: Page[ApiKey]) -> dict[str, Any]:
    return {
        "apiKeys": [render_key(key) for key in page.items],
        "paging": {
            "page": page.page,
            "pageSize": page.size,
            "orderDirection": page.extra.get("orderDirection", "ASC"),
            "orderBy": page.extra.get("orderBy", "id"),
            "totalCount": page.total,
            "totalPages": page.total_pages,
        },
    }


def render_cascade(report: CascadeReport) -> dict[str, Any]:
    return {
        "associationsRemoved": report.associations_removed,
        "entriesRemoved": report.entries_removed,
        "keysDisabled": list(report.keys_disabled),
    }
