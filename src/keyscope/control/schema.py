"""Management documents in and out: validation of request bodies and query strings, rendering of records.

One implementation for the management API, the CLI (which drives that API in-process) and the web interface,
so that a document is accepted or refused the same way everywhere. Field names are the platform's own
(`applicationId`, `allowedIPs`, `platform[].action`, ...). Every refusal is a ValidationError naming the
offending field the way a client spells it, e.g. `platform[1].action`.

Decisions: `platform[].key` in input is accepted and ignored (it is server-assigned and read-only), so a client
may send back an entry it read; entries naming the same application/entity pair twice are refused; an absent
`entityId` in an association means `null`; `allowedIPs` absent, `null` or empty means no IP restriction.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from keyscope.core.models import (
    CHANNELS,
    RESOURCE_TYPES,
    UNSET,
    ApiKey,
    Application,
    Association,
    AssociationFilter,
    CascadeReport,
    Entity,
    KeyUpdate,
    Page,
    PlatformEntry,
    PlatformLink,
)

ID_PATTERN = re.compile(r"[A-Za-z0-9._~-]{1,255}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_NAME = 255
MAX_ALLOWED_IPS = 1000
MAX_PLATFORM = 100
MAX_PAGE = 10_000_000

T = TypeVar("T")


class ValidationError(ValueError):
    """A document or query refused; `field` is the client's name for what was wrong."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


# field checks --------------------------------------------------------------------------------------


def check_id(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string")
    if not ID_PATTERN.fullmatch(value):
        raise ValidationError(field, "must be 1-255 characters from A-Z a-z 0-9 . _ ~ -")
    return value


def check_name(value: Any, field: str, *, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string")
    if required and not value:
        raise ValidationError(field, "must not be empty")
    if len(value) > MAX_NAME:
        raise ValidationError(field, f"must be at most {MAX_NAME} characters")
    if _CONTROL.search(value):
        raise ValidationError(field, "must not contain control characters")
    return value


def check_enum(value: Any, field: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValidationError(field, "must be one of " + ", ".join(allowed))
    return value


def check_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(field, "must be true or false")
    return value


def parse_datetime(value: Any, field: str) -> datetime:
    """ISO 8601; a time without an offset is UTC. The result is always timezone-aware UTC."""
    if not isinstance(value, str):
        raise ValidationError(field, "must be an ISO 8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(field, "must be an ISO 8601 date-time, e.g. 2026-01-01T00:00:00Z") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValidationError(field, "is out of range") from None


def format_datetime(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def normalise_ip(value: Any, field: str) -> str:
    """An address stays an address, a range becomes its network (`10.0.0.7/8` -> `10.0.0.0/8`)."""
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string")
    if "%" in value:
        raise ValidationError(field, "must not carry an IPv6 zone")
    try:
        if "/" in value:
            return str(ipaddress.ip_network(value, strict=False))
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValidationError(field, "must be an IP address or a CIDR range") from None


def one_year_after(moment: datetime) -> datetime:
    try:
        return moment.replace(year=moment.year + 1)
    except ValueError:  # 29 February
        return moment + timedelta(days=365)


def check_validity(valid_from: datetime, valid_to: datetime) -> None:
    if valid_to <= valid_from:
        raise ValidationError("validTo", "must be after validFrom")


# documents -----------------------------------------------------------------------------------------


def _object(doc: Any, allowed: frozenset[str], where: str = "") -> Mapping[str, Any]:
    if not isinstance(doc, dict):
        raise ValidationError(where or "body", "must be a JSON object")
    for name in doc:
        if name not in allowed:
            raise ValidationError(f"{where}.{name}" if where else name, "is not a known field")
    return doc


def _required(doc: Mapping[str, Any], name: str) -> Any:
    if name not in doc:
        raise ValidationError(name, "is required")
    return doc[name]


_APPLICATION = frozenset({"applicationId", "applicationName"})
_ENTITY = frozenset({"entityId", "entityName"})


def parse_application(doc: Any) -> Application:
    doc = _object(doc, _APPLICATION)
    return Application(
        check_id(_required(doc, "applicationId"), "applicationId"),
        check_name(doc.get("applicationName"), "applicationName"),
    )


def parse_application_update(doc: Any, application_id: str) -> str | None:
    """The new name. Ids never change: an `applicationId` other than the path's is refused."""
    doc = _object(doc, _APPLICATION)
    if "applicationId" in doc and doc["applicationId"] != application_id:
        raise ValidationError("applicationId", "cannot be changed")
    return check_name(doc.get("applicationName"), "applicationName")


def parse_entity(doc: Any) -> Entity:
    doc = _object(doc, _ENTITY)
    return Entity(check_id(_required(doc, "entityId"), "entityId"), check_name(doc.get("entityName"), "entityName"))


def parse_entity_update(doc: Any, entity_id: str) -> str | None:
    doc = _object(doc, _ENTITY)
    if "entityId" in doc and doc["entityId"] != entity_id:
        raise ValidationError("entityId", "cannot be changed")
    return check_name(doc.get("entityName"), "entityName")


_ASSOCIATION = frozenset({"resourceType", "channel", "applicationId", "entityId", "resourceId"})


def _check_domain(resource_type: str, channel: str) -> None:
    if resource_type == "DOMAIN" and channel != "EMAIL":
        raise ValidationError("resourceType", "DOMAIN is valid for the EMAIL channel only")


def parse_association(doc: Any) -> Association:
    doc = _object(doc, _ASSOCIATION)
    resource_type = check_enum(_required(doc, "resourceType"), "resourceType", RESOURCE_TYPES)
    channel = check_enum(_required(doc, "channel"), "channel", CHANNELS)
    _check_domain(resource_type, channel)
    entity_id = doc.get("entityId")
    return Association(
        resource_type=resource_type,
        channel=channel,
        application_id=check_id(_required(doc, "applicationId"), "applicationId"),
        entity_id=None if entity_id is None else check_id(entity_id, "entityId"),
        resource_id=check_resource_id(_required(doc, "resourceId"), "resourceId"),
    )


def check_resource_id(value: Any, field: str) -> str:
    """Resource ids are the platform's (number keys, domain names): any printable text up to 255."""
    name = check_name(value, field, required=True)
    assert name is not None
    return name


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


# keys ----------------------------------------------------------------------------------------------

_KEY_CREATE = frozenset({"name", "allowedIPs", "validFrom", "validTo", "enabled", "platform"})
_ENTRY = frozenset({"key", "applicationId", "entityId", "action"})


@dataclass(frozen=True, slots=True)
class KeyDraft:
    """A validated create request; the management API adds the id, the secret's hash and prefix."""

    name: str
    allowed_ips: tuple[str, ...]
    valid_from: datetime
    valid_to: datetime
    enabled: bool
    platform: tuple[PlatformLink, ...]


def parse_allowed_ips(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValidationError("allowedIPs", "must be a list of IP addresses or CIDR ranges")
    if len(value) > MAX_ALLOWED_IPS:
        raise ValidationError("allowedIPs", f"must have at most {MAX_ALLOWED_IPS} entries")
    normalised = (normalise_ip(item, f"allowedIPs[{i}]") for i, item in enumerate(value))
    return tuple(dict.fromkeys(normalised))


def parse_platform(value: Any) -> tuple[PlatformLink, ...]:
    if not isinstance(value, list):
        raise ValidationError("platform", "must be a list of {applicationId, entityId, action} objects")
    if len(value) > MAX_PLATFORM:
        raise ValidationError("platform", f"must have at most {MAX_PLATFORM} entries")
    links: list[PlatformLink] = []
    seen: set[tuple[str | None, str | None]] = set()
    with_action = None
    for i, item in enumerate(value):
        where = f"platform[{i}]"
        entry = _object(item, _ENTRY, where)
        key = entry.get("key")
        if key is not None and not isinstance(key, str):
            raise ValidationError(f"{where}.key", "must be a string")
        application_id = entry.get("applicationId")
        entity_id = entry.get("entityId")
        if application_id is not None:
            check_id(application_id, f"{where}.applicationId")
        if entity_id is not None:
            check_id(entity_id, f"{where}.entityId")
        if application_id is None and entity_id is None:
            raise ValidationError(where, "must name an applicationId, an entityId or both")
        action = entry.get("action")
        if action is not None:
            check_enum(action, f"{where}.action", ("FILL", "FORCE"))
            if with_action is not None:
                raise ValidationError(f"{where}.action", f"only one entry may have an action ({with_action} has one)")
            with_action = where
        if (application_id, entity_id) in seen:
            raise ValidationError(where, "names the same application and entity as an earlier entry")
        seen.add((application_id, entity_id))
        links.append(PlatformLink(application_id, entity_id, action))
    return tuple(links)


def parse_key_create(doc: Any, now: datetime) -> KeyDraft:
    doc = _object(doc, _KEY_CREATE)
    name = check_name(_required(doc, "name"), "name", required=True)
    assert name is not None
    valid_from = parse_datetime(doc["validFrom"], "validFrom") if doc.get("validFrom") is not None else now
    valid_to = parse_datetime(doc["validTo"], "validTo") if doc.get("validTo") is not None else one_year_after(now)
    check_validity(valid_from, valid_to)
    enabled = check_bool(doc["enabled"], "enabled") if doc.get("enabled") is not None else True
    platform = parse_platform(doc["platform"]) if doc.get("platform") is not None else ()
    return KeyDraft(name, parse_allowed_ips(doc.get("allowedIPs")), valid_from, valid_to, enabled, platform)


def parse_key_update(doc: Any) -> KeyUpdate:
    """Absent fields keep their value; `platform: []` makes the key primary, `platform: null` is refused
    because it could mean either."""
    doc = _object(doc, _KEY_CREATE)
    fields: dict[str, Any] = {}
    if "name" in doc:
        fields["name"] = check_name(doc["name"], "name", required=True)
    if "allowedIPs" in doc:
        fields["allowed_ips"] = parse_allowed_ips(doc["allowedIPs"])
    if "validFrom" in doc:
        fields["valid_from"] = parse_datetime(doc["validFrom"], "validFrom")
    if "validTo" in doc:
        fields["valid_to"] = parse_datetime(doc["validTo"], "validTo")
    if "enabled" in doc:
        fields["enabled"] = check_bool(doc["enabled"], "enabled")
    if "platform" in doc:
        fields["platform"] = parse_platform(doc["platform"])
    return KeyUpdate(**fields)


def check_key_update(current: ApiKey, update: KeyUpdate) -> None:
    """Rules that need the stored key: the validity window, and no silent widening to a primary key.

    A key with no entries that is disabled may have been disabled by a cascade; enabling it alone would
    turn a once-linked key into a primary one, so the same request must say which it is (`platform`).
    """
    valid_from = current.valid_from if update.valid_from is UNSET else update.valid_from
    valid_to = current.valid_to if update.valid_to is UNSET else update.valid_to
    assert isinstance(valid_from, datetime) and isinstance(valid_to, datetime)
    check_validity(valid_from, valid_to)
    if update.enabled is True and not current.enabled and not current.platform and update.platform is UNSET:
        raise ValidationError(
            "platform", "this disabled key has no platform entries: send platform ([] for a primary key) to enable it"
        )


# rendering -----------------------------------------------------------------------------------------


def render_application(app: Application) -> dict[str, Any]:
    return {"applicationId": app.application_id, "applicationName": app.application_name}


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
