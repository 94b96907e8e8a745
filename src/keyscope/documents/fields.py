"""Field checks shared by every management document and query: ids, names, enums, booleans, date-times, IPs.

Every refusal is a ValidationError naming the offending field the way a client spells it (`platform[1].action`),
so the error body can point at it: the legacy family's `validationErrors` key, the api-error family's `property`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from keyscope.core import ratelimits
from keyscope.core.networks import parse_network
from keyscope.core.ratelimits import RateLimit, RateLimitError

ID_PATTERN = re.compile(r"[A-Za-z0-9._~-]{1,255}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_NAME = 255


class ValidationError(ValueError):
    """A document or query refused; `field` is the client's name for what was wrong."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


def check_rate_limits(value: Any, field: str = "rateLimits") -> tuple[RateLimit, ...]:
    """`[{"requests": N, "per": "second|minute|hour|day"}, ...]`, at most one per period (`core.ratelimits`);
    null is none."""
    try:
        return ratelimits.from_doc(value, field)
    except RateLimitError as exc:
        raise ValidationError(exc.field, exc.message) from None


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


def check_resource_id(value: Any, field: str) -> str:
    """Resource ids are the platform's (number keys, domain names): any printable text up to 255."""
    name = check_name(value, field, required=True)
    assert name is not None
    return name


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


def one_year_after(moment: datetime) -> datetime:
    try:
        return moment.replace(year=moment.year + 1)
    except ValueError:  # 29 February
        return moment + timedelta(days=365)


def check_validity(valid_from: datetime, valid_to: datetime) -> None:
    if valid_to <= valid_from:
        raise ValidationError("validTo", "must be after validFrom")


def normalise_ip(value: Any, field: str) -> str:
    """An address stays an address, a range becomes its network (`10.0.0.7/8` -> `10.0.0.0/8`).

    Parsed by `core.networks.parse_network`, the parser the gateway reads a key's allowedIPs with, so what is
    accepted here is what the gateway can match. An address is kept as written in its own family:
    `::ffff:10.0.0.1` stays an IPv6 address (its /128 network's address), it is not unwrapped to IPv4.
    """
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string")
    try:
        network = parse_network(value)
    except ValueError:
        if "%" in value:  # parse_network refuses a zone; say so rather than "not an address"
            raise ValidationError(field, "must not carry an IPv6 zone") from None
        raise ValidationError(field, "must be an IP address or a CIDR range") from None
    return str(network) if "/" in value else str(network.network_address)


def object_of(doc: Any, allowed: frozenset[str], where: str = "") -> Mapping[str, Any]:
    """`doc` as a JSON object with only `allowed` members: an unknown one is refused, never ignored."""
    if not isinstance(doc, dict):
        raise ValidationError(where or "body", "must be a JSON object")
    for name in doc:
        if name not in allowed:
            raise ValidationError(f"{where}.{name}" if where else name, "is not a known field")
    return doc


def required(doc: Mapping[str, Any], name: str) -> Any:
    if name not in doc:
        raise ValidationError(name, "is required")
    return doc[name]
