"""What a management request says: its JSON body, read within a size limit and decoded strictly, and its query.

The body is counted as it arrives: Content-Length is only a first hint (a client may understate it, or send
none), so reading stops as soon as the bytes pass MAX_BODY, and nothing past the limit is ever buffered.
Starlette's `Request.body()` reads all of it first, so this reads `Request.stream()` instead.

Strict JSON is `keyscope.core.jsonstrict`'s, the rules the gateway's scope check holds bodies to; here a broken
rule is a ValidationError naming `body` (or the repeated member), as the management API words it.
"""

from __future__ import annotations

import json
import re
from contextlib import aclosing
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from keyscope.core import jsonstrict
from keyscope.core.errors import Refusal
from keyscope.core.jsonstrict import StrictJSONError
from keyscope.documents.fields import ValidationError
from keyscope.documents.schema import query_params

MAX_BODY = 64 * 1024


async def read_json(request: Request, limit: int = MAX_BODY) -> Any:
    return parse_json(await read_body(request, limit))


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The JSON body, at most `limit` bytes (MAX_BODY unless a route says otherwise: a whole state document for
    `keyscope apply`) counted as they arrive (Content-Length is only a first hint).

    Headers are read as sent, in order: a bad or too large Content-Length is refused where it stands, and of
    several Content-Type headers the last one counts. A client that goes away mid-body raises Starlette's
    ClientDisconnect: there is nobody left to answer."""
    content_type = b""
    for name, value in request.headers.raw:
        lowered = name.lower()
        if lowered == b"content-type":
            content_type = value
        elif lowered == b"content-length":
            if not value.isdigit():
                raise Refusal(400, reason="bad_content_length", step="admin", field="Content-Length")
            if int(value) > limit:
                raise Refusal(413, reason="body_too_large", step="admin")
    if content_type.split(b";", 1)[0].strip().lower() != b"application/json":
        raise Refusal(415, reason="not_json", step="admin")
    chunks: list[bytes] = []
    size = 0
    async with aclosing(request.stream()) as stream:
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise Refusal(413, reason="body_too_large", step="admin")
            chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    """Strict JSON (UTF-8 without BOM, no duplicate names, no NaN/Infinity); anything else names `body`.

    Two things Python's decoder reads but nothing downstream can hold are refused here too: a `\\ud800`
    escape decodes to a lone surrogate, which is no text (UTF-8 cannot encode it, so neither the store nor an
    answer naming it can), refused naming the member that holds it; and an integer past Python's digit
    limit (4300) raises ValueError, refused as a malformed body."""
    try:
        doc = jsonstrict.loads(raw)
    except StrictJSONError as broken:
        raise _invalid(broken) from None
    except json.JSONDecodeError as exc:
        raise ValidationError("body", f"is not valid JSON ({exc.msg} at position {exc.pos})") from None
    except RecursionError:
        raise ValidationError("body", "is nested too deeply") from None
    except ValueError:  # int("1" * 5000): past sys.get_int_max_str_digits()
        raise ValidationError("body", "holds a number too long to read") from None
    where = _surrogate_in(doc, "")
    if where is not None:
        raise ValidationError(where or "body", "must not contain a lone surrogate (\\ud800-\\udfff)")
    return doc


_SURROGATE = re.compile("[\ud800-\udfff]")


def _surrogate_in(doc: Any, where: str) -> str | None:
    """Where the first lone surrogate is: the member's name as a client spells it (`platform[0].name`), or ""
    (the body) when a member's own name holds one; None when there is none. A loop, not a recursion: the
    decoder may nest as deep as the stack allows, and a walk on top of it must not run out."""
    pending: list[tuple[Any, str]] = [(doc, where)]
    while pending:
        value, where = pending.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return where if len(where) <= 255 else ""  # a name as long as a field may be, or the body
        elif isinstance(value, list):
            pending.extend((item, f"{where}[{index}]") for index, item in reversed(list(enumerate(value))))
        elif isinstance(value, dict):
            for name in value:
                if _SURROGATE.search(name):
                    return ""
            pending.extend((item, f"{where}.{name}" if where else name) for name, item in reversed(value.items()))
    return None


def _invalid(broken: StrictJSONError) -> ValidationError:
    if broken.rule == "duplicate":
        assert broken.name is not None
        return ValidationError(broken.name, "is given more than once")
    if broken.rule == "constant":
        return ValidationError("body", f"{broken.name} is not valid JSON")
    if broken.rule == "bom":
        return ValidationError("body", "must not start with a byte order mark")
    return ValidationError("body", "is not valid UTF-8")


def query(request: Request, allowed: frozenset[str]) -> dict[str, str]:
    """The query's parameters, each of them `allowed` and given once; the raw query string must be ASCII."""
    raw = request.scope.get("query_string", b"")
    try:
        items = parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict", max_num_fields=64)
    except (UnicodeError, ValueError):
        raise ValidationError("query", "is not a valid query string") from None
    return query_params(items, allowed)
