"""Key documents: what a create or update of an API key may say, and the rules that need the stored key.

Field names are the platform's (`allowedIPs`, `validFrom`, `platform[].action`, ...). Decisions:
`platform[].key` in input is accepted and ignored (it is server-assigned and read-only), so a client may send
back an entry it read; entries naming the same application/entity pair twice are refused; `allowedIPs` absent,
`null` or empty means no IP restriction; at most one entry may carry an action, since FILL/FORCE write one
scope into a request. keyscope's own fields: `rateLimits` (`core.ratelimits`; absent, null or `[]`: none) and
`enforce` (absent: true; false is shadow mode for the key).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from keyscope.documents.fields import (
    ValidationError,
    check_bool,
    check_enum,
    check_id,
    check_name,
    check_rate_limits,
    check_validity,
    normalise_ip,
    object_of,
    one_year_after,
    parse_datetime,
    required,
)
from keyscope.core.keys import display_prefix, hash_secret, new_secret
from keyscope.core.models import UNSET, ApiKey, KeyUpdate, PlatformEntry, PlatformLink
from keyscope.core.ratelimits import RateLimit

MAX_ALLOWED_IPS = 1000
MAX_PLATFORM = 100

KEY_FIELDS = frozenset({"name", "allowedIPs", "validFrom", "validTo", "enabled", "platform", "rateLimits", "enforce"})
"""What a key document may say (a state file's key items add their `id`: `keyscope.state.document`)."""
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
    rate_limits: tuple[RateLimit, ...] = ()
    enforce: bool = True


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
        entry = object_of(item, _ENTRY, where)
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
    doc = object_of(doc, KEY_FIELDS)
    name = check_name(required(doc, "name"), "name", required=True)
    assert name is not None
    valid_from = parse_datetime(doc["validFrom"], "validFrom") if doc.get("validFrom") is not None else now
    valid_to = parse_datetime(doc["validTo"], "validTo") if doc.get("validTo") is not None else one_year_after(now)
    check_validity(valid_from, valid_to)
    enabled = check_bool(doc["enabled"], "enabled") if doc.get("enabled") is not None else True
    platform = parse_platform(doc["platform"]) if doc.get("platform") is not None else ()
    enforce = check_bool(doc["enforce"], "enforce") if doc.get("enforce") is not None else True
    return KeyDraft(name, parse_allowed_ips(doc.get("allowedIPs")), valid_from, valid_to, enabled, platform,
                    check_rate_limits(doc.get("rateLimits")), enforce)


def parse_key_update(doc: Any) -> KeyUpdate:
    """Absent fields keep their value; `platform: []` makes the key primary, `platform: null` is refused
    because it could mean either."""
    doc = object_of(doc, KEY_FIELDS)
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
    if "rateLimits" in doc:
        fields["rate_limits"] = check_rate_limits(doc["rateLimits"])
    if "enforce" in doc:
        fields["enforce"] = check_bool(doc["enforce"], "enforce")
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


class KeyFields(Protocol):
    """What a new key is made from: a parsed create body (`KeyDraft`) or a state file's key."""

    name: str | None
    allowed_ips: tuple[str, ...]
    valid_from: datetime
    valid_to: datetime
    enabled: bool
    platform: tuple[PlatformLink, ...]
    rate_limits: tuple[RateLimit, ...]
    enforce: bool


def issue(fields: KeyFields, key_id: str, now: datetime) -> tuple[ApiKey, str]:
    """A new key with these fields and a fresh secret: the key to store, and the secret, shown once and kept
    nowhere (the store gets its hash and display prefix)."""
    secret = new_secret()
    key = ApiKey(
        id=key_id,
        name=fields.name,
        secret_hash=hash_secret(secret),
        prefix=display_prefix(secret),
        allowed_ips=fields.allowed_ips,
        valid_from=fields.valid_from,
        valid_to=fields.valid_to,
        enabled=fields.enabled,
        platform=tuple(PlatformEntry("", link.application_id, link.entity_id, link.action) for link in fields.platform),
        created_at=now,
        rate_limits=fields.rate_limits,
        enforce=fields.enforce,
    )
    return key, secret
