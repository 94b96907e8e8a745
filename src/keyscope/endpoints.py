"""The allowlist: which (method, path template) a linked key may call, and where each request carries its ids.

Loaded from `endpoints.yaml` and validated whole before anything starts: a broken file never yields a
running gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ErrorFamily = Literal["legacy", "api-error"]


class EndpointsError(ValueError):
    """endpoints.yaml is unusable; the message names the entry and the problem."""


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
