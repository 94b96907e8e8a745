"""Which requests are management calls: answered by keyscope's own management API, never forwarded."""

from __future__ import annotations

_PROVISIONING = b"/provisioning/1"
_API_KEYS = b"/settings/2/api-keys"
_KEYSCOPE = b"/keyscope/1"  # keyscope's own management API (the audit trail)
_MANAGEMENT_FIRST = frozenset(b"pPsSkK")


def is_management(raw_path: bytes) -> bool:
    """Whether the canonical raw path starts with `/provisioning/1`, `/settings/2/api-keys` or `/keyscope/1`, in any
    letter case.

    Whatever follows counts: a backend may route `/settings/2/api-keys.json` (Rails' `(.:format)`),
    `/settings/2/api-keys.` or `/settings/2/api-keys~` (Spring's suffix matching), `/provisioning/10` (a proxy's
    plain prefix match) or `/PROVISIONING/1` (case-insensitive routing) to its management endpoints, with the
    upstream's own credentials. All of it is the admin app's, which answers 404 for what it does not know.
    """
    if len(raw_path) < len(_KEYSCOPE) or raw_path[1] not in _MANAGEMENT_FIRST:
        return False
    start = raw_path[: len(_API_KEYS)].lower()
    return start.startswith((_PROVISIONING, _KEYSCOPE)) or start == _API_KEYS
