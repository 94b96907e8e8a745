"""Rows to models and back: the key SELECTs (one key with its entries, and its applications' limits, in one round
trip) and the JSON columns' parsing, cached because the gateway's key lookup goes through it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache

from keyscope.core import ratelimits
from keyscope.core.models import ApiKey, PlatformEntry
from keyscope.core.ratelimits import RateLimit
from keyscope.store.sqlbase import Row

_KEY_COLUMNS = (
    "k.id, k.name, k.secret_hash, k.prefix, k.allowed_ips, k.valid_from, k.valid_to, k.enabled,"
    " k.created_at, k.last_used_at, e.entry_key, e.application_id, e.entity_id, e.action, k.rate_limits, k.enforce"
)
_KEYS_WHERE = (
    f"SELECT {_KEY_COLUMNS} FROM api_keys k LEFT JOIN key_entries e ON e.key_id = k.id"
    " WHERE {where} ORDER BY k.id, e.position"
)
# one key with the limits of the applications its entries name, in the same round trip: what the gateway
# looks up, and what `get_key` answers (so that `explain` by key id sees the limits the gateway would count)
_KEY_WITH_LIMITS = (
    f"SELECT {_KEY_COLUMNS}, a.rate_limits FROM api_keys k LEFT JOIN key_entries e ON e.key_id = k.id"
    " LEFT JOIN applications a ON a.application_id = e.application_id"
    " WHERE {where} ORDER BY k.id, e.position"
)
_FIND_BY_HASH = _KEY_WITH_LIMITS.format(where="k.secret_hash = ?")
_GET_KEY = _KEY_WITH_LIMITS.format(where="k.id = ?")
_ASSOCIATION_COLUMNS = "resource_type, channel, application_id, entity_id, resource_id"


def _exact_association(
    resource_type: str, channel: str, application_id: str, resource_id: str, entity_id: str | None
) -> tuple[str, tuple[str, ...]]:
    """The WHERE clause naming exactly one association (no untyped `? IS NULL`: PostgreSQL refuses it)."""
    where = "resource_type = ? AND channel = ? AND resource_id = ? AND application_id = ?"
    args = (resource_type, channel, resource_id, application_id)
    if entity_id is None:
        return f"{where} AND entity_id IS NULL", args
    return f"{where} AND entity_id = ?", (*args, entity_id)


def _keys_from_rows(rows: list[Row]) -> list[ApiKey]:
    """Groups joined key/entry rows (ordered by key id, then entry position) into keys."""
    keys: list[ApiKey] = []
    current: Row | None = None
    entries: list[PlatformEntry] = []
    applications: dict[str, tuple[RateLimit, ...]] = {}  # with _FIND_BY_HASH: the entries' applications' limits
    for row in rows:
        if current is None or row[0] != current[0]:
            if current is not None:
                keys.append(_key(current, entries, applications))
            current, entries, applications = row, [], {}
        if row[10] is not None:
            entries.append(PlatformEntry(row[10], row[11], row[12], row[13]))
            if len(row) > 16 and row[16] is not None and row[16] != "[]":
                applications[row[11]] = _rate_limits(row[16])
    if current is not None:
        keys.append(_key(current, entries, applications))
    return keys


@lru_cache(maxsize=4096)
def _rate_limits(text: str) -> tuple[RateLimit, ...]:
    """A stored `rate_limits` column (JSON, written by keyscope itself)."""
    return tuple(RateLimit(item["requests"], item["per"]) for item in json.loads(text)) if text != "[]" else ()


def _rate_limits_text(limits: Sequence[RateLimit]) -> str:
    return json.dumps(ratelimits.to_doc(limits))


@lru_cache(maxsize=4096)
def _allowed_ips(text: str) -> tuple[str, ...]:
    """Most keys share a handful of IP lists: parse each once (it is on the lookup path)."""
    return tuple(json.loads(text))


def _key(row: Row, entries: list[PlatformEntry], applications: dict[str, tuple[RateLimit, ...]]) -> ApiKey:
    return ApiKey(
        id=row[0],
        name=row[1],
        secret_hash=bytes.fromhex(row[2]),
        prefix=row[3],
        allowed_ips=_allowed_ips(row[4]),
        valid_from=datetime.fromisoformat(row[5]),
        valid_to=datetime.fromisoformat(row[6]),
        enabled=bool(row[7]),
        platform=tuple(entries),
        created_at=datetime.fromisoformat(row[8]),
        last_used=datetime.fromisoformat(row[9]) if row[9] is not None else None,
        rate_limits=_rate_limits(row[14]),
        enforce=bool(row[15]),
        application_limits=tuple(applications.items()),
    )
