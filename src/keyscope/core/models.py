"""The control plane's records, shared by the store, the management API, the CLI and the gateway.

Plain frozen dataclasses: the gateway caches them across requests, so nothing may mutate one in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, Literal, TypeVar

from keyscope.core.ratelimits import RateLimit

DEFAULT_APPLICATION = "default"

Action = Literal["FILL", "FORCE"]
RESOURCE_TYPES = ("NUMBER", "DOMAIN", "ALPHA", "RCS_RESOURCE", "APPLE_RESOURCE")
CHANNELS = ("SMS", "MMS", "EMAIL", "WHATSAPP", "RCS", "APPLE")


@dataclass(frozen=True, slots=True)
class Application:
    application_id: str
    application_name: str | None = None
    rate_limits: tuple[RateLimit, ...] = ()
    """What every key linked to the application spends from together (`keyscope.core.ratelimits`)."""


@dataclass(frozen=True, slots=True)
class Entity:
    entity_id: str
    entity_name: str | None = None


@dataclass(frozen=True, slots=True)
class Association:
    """A resource (resource_type, channel, resource_id) grouped under an application and maybe an entity."""

    resource_type: str
    channel: str
    application_id: str
    entity_id: str | None
    resource_id: str


@dataclass(frozen=True, slots=True)
class PlatformEntry:
    """One link of a key: an application, an entity, or a pair; unset kinds are unconstrained."""

    key: str
    application_id: str | None
    entity_id: str | None
    action: Action | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key record. The secret itself is never kept: only its hash and a short display prefix."""

    id: str
    name: str
    secret_hash: bytes
    prefix: str
    allowed_ips: tuple[str, ...]
    valid_from: datetime
    valid_to: datetime
    enabled: bool
    platform: tuple[PlatformEntry, ...] = ()
    created_at: datetime | None = None
    last_used: datetime | None = None
    rate_limits: tuple[RateLimit, ...] = ()
    """The key's own limits (`keyscope.core.ratelimits`)."""
    enforce: bool = True
    """False: what steps 4-5 or a rate limit would refuse is forwarded and logged as `shadow` instead."""
    application_limits: tuple[tuple[str, tuple[RateLimit, ...]], ...] = ()
    """(application id, its limits) for the applications the entries name that have limits: read by the store
    with the key for the gateway (`find_key_by_hash`); empty elsewhere."""

    @property
    def is_primary(self) -> bool:
        """Unlinked keys call every endpoint; a cascade never produces one (it disables instead)."""
        return not self.platform


@dataclass(frozen=True, slots=True)
class PlatformLink:
    """A requested link, before the store gives it a server-side key."""

    application_id: str | None
    entity_id: str | None
    action: Action | None = None


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: _Unset = _Unset()


@dataclass(frozen=True, slots=True)
class KeyUpdate:
    """A partial update: fields left UNSET keep their stored value; platform=() makes a key primary."""

    name: str | _Unset = UNSET
    allowed_ips: tuple[str, ...] | _Unset = UNSET
    valid_from: datetime | _Unset = UNSET
    valid_to: datetime | _Unset = UNSET
    enabled: bool | _Unset = UNSET
    platform: tuple[PlatformLink, ...] | _Unset = UNSET
    rate_limits: tuple[RateLimit, ...] | _Unset = UNSET
    enforce: bool | _Unset = UNSET


@dataclass(frozen=True, slots=True)
class AssociationFilter:
    resource_type: str | None = None
    channel: str | None = None
    application_id: str | None = None
    entity_id: str | None = None
    resource_id: str | None = None


@dataclass(frozen=True, slots=True)
class CascadeReport:
    """What deleting an application or entity removed, so callers (and the web UI) can say so."""

    associations_removed: int = 0
    entries_removed: int = 0
    keys_disabled: tuple[str, ...] = ()


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    page: int
    size: int
    total: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def total_pages(self) -> int:
        return (self.total + self.size - 1) // self.size if self.size else 0
