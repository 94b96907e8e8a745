"""The storage interface every store implements (SQLite embedded, PostgreSQL shared).

The rules that need a transaction live behind this interface, so that one implementation of each holds for
the management API, the CLI and the web interface alike: reference checks, at most one association per
resource, the protected `default` application, and cascades that only ever narrow a key.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime

from keyscope.core.models import (
    ApiKey,
    Application,
    Association,
    AssociationFilter,
    CascadeReport,
    Entity,
    KeyUpdate,
    Page,
)
from keyscope.core.ratelimits import RateLimit
from keyscope.store.audit import Audit, AuditRecord


class StoreError(Exception):
    """Base of every error a store raises on purpose."""


class NotFound(StoreError):
    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} not found")
        self.kind = kind
        self.ident = ident


class Conflict(StoreError):
    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} already exists")
        self.kind = kind
        self.ident = ident


class MissingReference(StoreError):
    """A write names an application or entity that does not exist; `field` is the request field."""

    def __init__(self, field: str, ident: str) -> None:
        super().__init__(f"{field}: {ident!r} does not exist")
        self.field = field
        self.ident = ident


class Protected(StoreError):
    """The write would remove something that must always exist (the `default` application)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached; callers answer 503 and must not guess."""


class Store(abc.ABC):
    """Async storage of applications, entities, associations and keys.

    Every method is one transaction: it either applies whole or leaves the store as it was. A write given an
    `audit` (`keyscope.store.audit`) writes its record in that same transaction and leaves it on `audit.record`.
    `revision()` grows with every write that can change what a key may do, so that caches elsewhere can
    tell when to drop entries.
    """

    url: str

    # lifecycle -------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, apply pending migrations and make sure the `default` application exists."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Store]:
        """`async with store.transaction() as tx:` -- a view of the store on which every call runs in one
        transaction, applied whole when the block ends or not at all if it raises (`keyscope apply`)."""

    # applications ----------------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_application(self, app: Application, *, audit: Audit | None = None) -> None:
        """Raises Conflict if the id exists."""

    @abc.abstractmethod
    async def get_application(self, application_id: str) -> Application:
        """Raises NotFound."""

    @abc.abstractmethod
    async def list_applications(self, page: int, size: int, search: str | None = None) -> Page[Application]:
        """Ordered by id; `search` matches a substring of the id or the name, case-insensitively."""

    @abc.abstractmethod
    async def rename_application(
        self, application_id: str, name: str | None, *, audit: Audit | None = None
    ) -> None:
        """Raises NotFound."""

    @abc.abstractmethod
    async def set_application_rate_limits(
        self, application_id: str, limits: Sequence[RateLimit], *, audit: Audit | None = None
    ) -> None:
        """Replaces the application's rate limits (a revision change: key records carry them). Raises NotFound."""

    @abc.abstractmethod
    async def delete_application(self, application_id: str, *, audit: Audit | None = None) -> CascadeReport:
        """Raises NotFound, or Protected for `default`. Removes associations and key entries naming it;
        a key left with no entries is disabled, never made primary."""

    # entities --------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_entity(self, entity: Entity, *, audit: Audit | None = None) -> None: ...

    @abc.abstractmethod
    async def get_entity(self, entity_id: str) -> Entity: ...

    @abc.abstractmethod
    async def list_entities(self, page: int, size: int, search: str | None = None) -> Page[Entity]: ...

    @abc.abstractmethod
    async def rename_entity(self, entity_id: str, name: str | None, *, audit: Audit | None = None) -> None: ...

    @abc.abstractmethod
    async def delete_entity(self, entity_id: str, *, audit: Audit | None = None) -> CascadeReport: ...

    # associations ----------------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_association(self, association: Association, *, audit: Audit | None = None) -> None:
        """Raises MissingReference (applicationId / entityId), or Conflict if the resource
        (resource_type, channel, resource_id) is already associated."""

    @abc.abstractmethod
    async def delete_association(self, association: Association, *, audit: Audit | None = None) -> None:
        """Raises NotFound unless exactly this association exists."""

    @abc.abstractmethod
    async def list_associations(self, filters: AssociationFilter, page: int, size: int) -> Page[Association]: ...

    @abc.abstractmethod
    async def get_association(
        self, resource_type: str, channel: str, application_id: str, resource_id: str, entity_id: str | None
    ) -> Association:
        """Raises NotFound."""

    # keys ------------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_key(self, key: ApiKey, *, audit: Audit | None = None) -> ApiKey:
        """Stores the key; entries' `key` fields are assigned here. Raises MissingReference
        (`platform[i].applicationId` / `platform[i].entityId`) or Conflict on a duplicate id/hash."""

    @abc.abstractmethod
    async def get_key(self, key_id: str) -> ApiKey:
        """Raises NotFound. Like `find_key_by_hash`, the key carries the rate limits of the applications its
        entries name (`application_limits`)."""

    @abc.abstractmethod
    async def find_key_by_hash(self, secret_hash: bytes) -> ApiKey | None:
        """The gateway's lookup: indexed, one round trip."""

    @abc.abstractmethod
    async def list_keys(
        self, page: int, size: int, name: str | None = None, enabled: bool | None = None
    ) -> Page[ApiKey]:
        """Ordered by id; `name` matches a substring of the key's name, case-insensitively."""

    @abc.abstractmethod
    async def update_key(self, key_id: str, update: KeyUpdate, *, audit: Audit | None = None) -> ApiKey:
        """Applies the set fields; a given platform replaces all entries. Raises NotFound, MissingReference."""

    @abc.abstractmethod
    async def delete_key(self, key_id: str, *, audit: Audit | None = None) -> None:
        """Raises NotFound."""

    @abc.abstractmethod
    async def keys_for_application(self, application_id: str) -> list[ApiKey]:
        """Keys with an entry naming the application (for the web interface and cascade previews)."""

    @abc.abstractmethod
    async def keys_for_entity(self, entity_id: str) -> list[ApiKey]: ...

    # the gateway's other reads ---------------------------------------------------------------------
    @abc.abstractmethod
    async def missing_ids(
        self, application_ids: Iterable[str], entity_ids: Iterable[str]
    ) -> tuple[frozenset[str], frozenset[str]]:
        """Which of these ids name no existing application / entity."""

    @abc.abstractmethod
    async def revision(self) -> int:
        """A counter bumped by every write that can narrow or widen a key or remove an id."""

    @abc.abstractmethod
    async def record_key_use(self, last_used: dict[str, datetime]) -> None:
        """Batch-writes last-used times (key id -> time); called off the request path."""

    # the audit trail -------------------------------------------------------------------------------
    @abc.abstractmethod
    async def list_audit(
        self, object_id: str | None, page: int, size: int, kind: str | None = None
    ) -> Page[AuditRecord]:
        """Records naming the object (with `kind`, only as that kind; without `object_id`, every record),
        newest first."""
