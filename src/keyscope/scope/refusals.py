"""The refusals of step 4, named once: every reader of a place raises these."""

from __future__ import annotations

from keyscope.core.errors import Refusal


class Uninspectable(Exception):
    """The body is in a shape keyscope will not read: 415 for a linked key, forwarded untouched for a primary."""


def refuse(status: int, reason: str, field: str | None, detail: str) -> Refusal:
    return Refusal(status, reason=reason, step="scope", field=field, detail=detail)


def special_name(special: str, name: str, what: str) -> Refusal:
    """400 for a name that names.classify() refuses (ARRAY, OVERRIDE or PROTO)."""
    if special == "_method":
        return refuse(400, "method_override", name, f"The {what} names {name!r}, which some backends read as "
                      "another request method.")
    if special == "__proto__":
        return refuse(400, "prototype_name", name, f"The {what} names {name!r}, a JavaScript prototype.")
    return refuse(400, "id_array", name, f"'{name}' would be read as a list or object of ids by some backends.")


def too_many(what: str, limit: int) -> Refusal:
    reason = {"parameters": "too_many_params", "parts": "too_many_parts", "members": "too_many_members"}[what]
    return refuse(400, reason, None, f"The request has more than {limit} {what}; backends would drop the rest.")
