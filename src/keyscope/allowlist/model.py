"""The allowlist's records: which (method, path template) a linked key may call, and where its ids are.

`keyscope.allowlist.table` makes them from `endpoints.yaml`, validated; everything downstream (the matcher,
scope, the gateway, the web interface) reads only these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ErrorFamily = Literal["legacy", "api-error"]

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
ERROR_FAMILIES = ("legacy", "api-error")


@dataclass(frozen=True, slots=True)
class JsonStep:
    """One step of a JSON location: `messages[]` is JsonStep("messages", each=True)."""

    name: str
    each: bool = False


@dataclass(frozen=True, slots=True)
class IdLocation:
    """Where a request to an endpoint declares applicationId/entityId.

    kind is "query" (query parameters), "form" (form or multipart fields) or "json"; for json, `path` is
    the object holding the ids, () meaning the document's top level (`$`).
    """

    kind: Literal["query", "json", "form"]
    path: tuple[JsonStep, ...] = ()
    text: str = ""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One allowlisted (method, path template); `path` follows `keyscope.allowlist.template`'s grammar."""

    method: str
    path: str
    function: str
    group: str
    ids: tuple[IdLocation, ...]
    errors: ErrorFamily
    deprecated: bool = False

    @property
    def carries_ids(self) -> bool:
        return bool(self.ids)
