"""Provisioning documents and management queries: applications, entities, associations, paging and filters.

One implementation for the management API, the CLI (which drives that API in-process), the web interface and
the state file (`keyscope.state`), so that a document is accepted or refused the same way everywhere. Field
names are the platform's own (`applicationId`, `resourceType`, ...); key documents are `keyschema`'s, rendering
is `control.render`'s.

Decisions: an absent `entityId` in an association means `null`; a query parameter given twice is refused, not
guessed at; unknown members and parameters are refused, so a typo never passes as a default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from keyscope.documents.fields import (
    ValidationError,
    check_enum,
    check_id,
    check_name,
    check_rate_limits,
    check_resource_id,
    object_of,
    required,
)
from keyscope.core.models import CHANNELS, RESOURCE_TYPES, Application, Association, AssociationFilter, Entity
from keyscope.core.ratelimits import RateLimit

MAX_PAGE = 10_000_000

_APPLICATION = frozenset({"applicationId", "applicationName", "rateLimits"})
_ENTITY = frozenset({"entityId", "entityName"})
_ASSOCIATION = frozenset({"resourceType", "channel", "applicationId", "entityId", "resourceId"})


def parse_application(doc: Any) -> Application:
    doc = object_of(doc, _APPLICATION)
    return Application(
        check_id(required(doc, "applicationId"), "applicationId"),
        check_name(doc.get("applicationName"), "applicationName"),
        check_rate_limits(doc.get("rateLimits")),
    )


def parse_application_update(doc: Any, application_id: str) -> str | None:
    """The new name. Ids never change: an `applicationId` other than the path's is refused."""
    doc = object_of(doc, _APPLICATION)
    if "applicationId" in doc and doc["applicationId"] != application_id:
        raise ValidationError("applicationId", "cannot be changed")
    return check_name(doc.get("applicationName"), "applicationName")


def parse_application_limits(doc: Any) -> tuple[RateLimit, ...] | None:
    """An update's `rateLimits` (`[]` or null: none); None when the document leaves them out (kept as they are,
    so that a client that only renames never drops them)."""
    doc = object_of(doc, _APPLICATION)
    return check_rate_limits(doc["rateLimits"]) if "rateLimits" in doc else None


def parse_entity(doc: Any) -> Entity:
    doc = object_of(doc, _ENTITY)
    return Entity(check_id(required(doc, "entityId"), "entityId"), check_name(doc.get("entityName"), "entityName"))


def parse_entity_update(doc: Any, entity_id: str) -> str | None:
    doc = object_of(doc, _ENTITY)
    if "entityId" in doc and doc["entityId"] != entity_id:
        raise ValidationError("entityId", "cannot be changed")
    return check_name(doc.get("entityName"), "entityName")


def _check_domain(resource_type: str, channel: str) -> None:
    if resource_type == "DOMAIN" and channel != "EMAIL":
        raise ValidationError("resourceType", "DOMAIN is valid for the EMAIL channel only")


def parse_association(doc: Any) -> Association:
    doc = object_of(doc, _ASSOCIATION)
    resource_type = check_enum(required(doc, "resourceType"), "resourceType", RESOURCE_TYPES)
    channel = check_enum(required(doc, "channel"), "channel", CHANNELS)
    _check_domain(resource_type, channel)
    entity_id = doc.get("entityId")
    return Association(
        resource_type=resource_type,
        channel=channel,
        application_id=check_id(required(doc, "applicationId"), "applicationId"),
        entity_id=None if entity_id is None else check_id(entity_id, "entityId"),
        resource_id=check_resource_id(required(doc, "resourceId"), "resourceId"),
    )


# queries -------------------------------------------------------------------------------------------


def query_params(items: list[tuple[str, str]], allowed: frozenset[str]) -> dict[str, str]:
    """Refuses unknown and repeated parameters: a repeated one is ambiguous, so it is never guessed at."""
    params: dict[str, str] = {}
    for name, value in items:
        if name not in allowed:
            raise ValidationError(name, "is not a known query parameter")
        if name in params:
            raise ValidationError(name, "must be given once")
        params[name] = value
    return params


def parse_int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
        raise ValidationError(name, f"must be an integer from {low} to {high}")
    value = int(raw)
    if not low <= value <= high:
        raise ValidationError(name, f"must be an integer from {low} to {high}")
    return value


def parse_paging(params: Mapping[str, str], default_size: int, max_size: int) -> tuple[int, int]:
    return parse_int(params, "page", 0, 0, MAX_PAGE), parse_int(params, "size", default_size, 1, max_size)


def parse_association_filter(params: Mapping[str, str]) -> AssociationFilter:
    def optional(name: str, check: Callable[[Any, str], str]) -> str | None:
        return check(params[name], name) if name in params else None

    return AssociationFilter(
        resource_type=optional("resourceType", lambda v, f: check_enum(v, f, RESOURCE_TYPES)),
        channel=optional("channel", lambda v, f: check_enum(v, f, CHANNELS)),
        application_id=optional("applicationId", check_id),
        entity_id=optional("entityId", check_id),
        resource_id=optional("resourceId", check_resource_id),
    )


def parse_association_key(params: Mapping[str, str]) -> Association:
    """The query of `GET /provisioning/1/associations/single`; only entityId is optional."""
    for name in ("resourceType", "channel", "applicationId", "resourceId"):
        if name not in params:
            raise ValidationError(name, "is required")
    return parse_association(dict(params))


def parse_bool_param(params: Mapping[str, str], name: str) -> bool | None:
    raw = params.get(name)
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise ValidationError(name, "must be true or false")
    return raw == "true"
