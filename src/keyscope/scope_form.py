"""Reading ids from query strings and forms (urlencoded and multipart), and writing them back.

Names are compared the way the most lenient backend would: case-insensitively, after percent-decoding, with
the Unicode case folds Java's `equalsIgnoreCase` applies (`applıcationId`, dotless i, counts). Parsing is
strict where stacks disagree: a raw `;` (a separator for some), a malformed escape, a multipart part with a
transfer encoding, a `name*=` parameter or a backslash in a quoted name are refused, never guessed.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple
from urllib.parse import quote

from .errors import Refusal

KINDS = ("applicationId", "entityId")
BY_FOLD = {"applicationid": "applicationId", "entityid": "entityId"}
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_TOKEN = rb"[A-Za-z0-9!#$&+\-.^_`|~*']+"
_PARAM = re.compile(rb";[ \t]*(" + _TOKEN + rb")[ \t]*=[ \t]*(\"[^\"\\\r\n]*\"|" + _TOKEN + rb")[ \t]*")
_MEDIA_TYPE = re.compile(_TOKEN + rb"/" + _TOKEN)
_HEADER = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\r\n]*?)[ \t]*")
# What takes a query out of plain_ids(): bytes outside visible ASCII, and `;`.
_NOT_PLAIN = re.compile(rb"[^!-~]|;")
_EXACT = {b"applicationId": "applicationId", b"entityId": "entityId"}


class Uninspectable(Exception):
    """The body is in a shape keyscope will not read: 415 for a linked key, forwarded untouched for a primary."""


# Control characters a backend written in C may stop at (NUL) or a lenient one may drop, with the spaces it trims.
_NOISE = dict.fromkeys([*range(0x20), 0x7F])


def id_kind(name: str) -> str | None:
    """"applicationId"/"entityId" when a lenient backend could read `name` as that id, else None.

    Besides case and Unicode folds, a name that is an id name once control characters are dropped and spaces
    trimmed (`applicationId%00`, ` entityId`) counts: a backend that truncates at NUL would read it as one.
    """
    lowered = name.lower()
    kind = BY_FOLD.get(lowered)
    if kind is not None or (
        name.isascii() and name.isprintable() and "applicationid" not in lowered and "entityid" not in lowered
    ):
        return kind
    name = name.translate(_NOISE).strip()
    for folded in (name.lower(), name.upper().lower(), name.casefold(), unicodedata.normalize("NFKC", name).lower()):
        kind = BY_FOLD.get(folded)
        if kind is not None:
            return kind
    return None


def refuse(status: int, reason: str, field: str | None, detail: str) -> Refusal:
    return Refusal(status, reason=reason, step="scope", field=field, detail=detail)


class Param(NamedTuple):
    """One `name=value` pair as sent and as decoded (`+` is a space; bad UTF-8 survives as surrogates)."""

    raw_name: bytes
    raw_value: bytes | None
    name: str
    value: str


Query = list[Param]


def parse_query(query: bytes, what: str = "query") -> Query:
    """Split a query string (or urlencoded form) on `&`; refuse a raw `;` and malformed escapes."""
    if b";" in query:
        raise refuse(400, "semicolon", what, f"The {what} contains a raw ';'; percent-encode it as %3B.")
    if b"%" in query and _BAD_ESCAPE.search(query):
        raise refuse(400, "bad_escape", what, f"The {what} contains a malformed percent-escape.")
    params: Query = []
    for piece in query.split(b"&"):
        if not piece:
            continue
        raw_name, eq, raw_value = piece.partition(b"=")
        params.append(Param(raw_name, raw_value if eq else None, _decode(raw_name), _decode(raw_value)))
    return params


def plain_ids(query: bytes) -> dict[str, str] | None:
    """The ids of a plain query, or None when parse_query() and id_fields() must read it.

    Plain: visible ASCII without `;` or malformed escapes, every name without escapes, and every name that
    a lenient backend could read as an id spelt exactly, once, with a UTF-8 value. Such names decode to
    themselves (but `+`), so none can turn into an id name by decoding, dropping control characters,
    trimming or folding: a name is an id name exactly when its bytes are, and a name merely containing one
    (`applicationId[]`, `xApplicationID`) is left to the full reading, as is anything it would refuse.
    """
    if not query:
        return {}
    if _NOT_PLAIN.search(query) is not None or b"%" in query and _BAD_ESCAPE.search(query) is not None:
        return None
    lowered = query.lower()
    if b"applicationid" not in lowered and b"entityid" not in lowered and b"%" not in query:
        return {}
    ids: dict[str, str] = {}
    for piece in query.split(b"&"):
        name, eq, value = piece.partition(b"=")
        kind = _EXACT.get(name)
        if kind is None:
            if b"%" in name:
                return None
            lowered = name.lower()
            if b"applicationid" in lowered or b"entityid" in lowered:
                return None
        elif not eq or kind in ids:
            return None
        else:
            decoded = _decode(value)
            if not decoded.isascii() and not _utf8(decoded):
                return None
            ids[kind] = decoded
    return ids


def _decode(raw: bytes) -> str:
    if b"+" in raw:
        raw = raw.replace(b"+", b" ")
    if b"%" in raw:
        raw = _ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), raw)
    return raw.decode("utf-8", "surrogateescape")


def encode(value: str) -> bytes:
    return quote(value, safe="-._~").encode("ascii")


def id_fields(names_values: list[tuple[str, str]], what: str) -> tuple[dict[str, str | None], dict[str, str]]:
    """The ids one query string or form names: kind -> value, kind -> name as written. Repeats are refused."""
    ids: dict[str, str | None] = {}
    names: dict[str, str] = {}
    for name, value in names_values:
        kind = id_kind(name)
        if kind is None:
            base, bracket, _ = name.partition("[")
            if bracket and id_kind(base) is not None:
                raise refuse(400, "id_array", name, f"'{name}' would be read as a list of ids by some backends.")
            continue
        if kind in ids:
            raise refuse(400, "duplicate_id", name, f"The {what} names {kind} more than once.")
        if not _utf8(value):
            raise refuse(400, "invalid_utf8", name, f"The value of {name} is not valid UTF-8.")
        ids[kind] = value
        names[kind] = name
    return ids, names


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def set_params(params: Query, values: dict[str, str]) -> bytes | None:
    """The query/form rebuilt with `values` for its ids (replaced in place, else appended); None if unchanged."""
    pieces: list[bytes] = []
    done: set[str] = set()
    changed = False
    for param in params:
        kind = id_kind(param.name)
        if kind in values:
            done.add(kind)
            if param.name == kind and param.value == values[kind] and param.raw_value is not None:
                pieces.append(param.raw_name + b"=" + param.raw_value)
                continue
            pieces.append(kind.encode() + b"=" + encode(values[kind]))
            changed = True
        else:
            pieces.append(param.raw_name if param.raw_value is None else param.raw_name + b"=" + param.raw_value)
    for kind in KINDS:
        if kind in values and kind not in done:
            pieces.append(kind.encode() + b"=" + encode(values[kind]))
            changed = True
    return b"&".join(pieces) if changed else None


def media_type(content_type: bytes) -> tuple[str, dict[str, bytes]]:
    """`type/subtype` lower-cased and its parameters (names lower-cased, quotes removed); Uninspectable if malformed."""
    head, _, rest = content_type.partition(b";")
    mime = head.strip().lower()
    if not _MEDIA_TYPE.fullmatch(mime):
        raise Uninspectable("malformed Content-Type")
    params: dict[str, bytes] = {}
    rest = b";" + rest if rest else b""
    pos = 0
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if match is None:
            if rest[pos:].strip(b"; \t"):
                raise Uninspectable("malformed Content-Type parameters")
            break
        name = match.group(1).lower().decode()
        if name in params:
            raise Uninspectable(f"Content-Type repeats the parameter {name}")
        params[name] = match.group(2).strip(b'"')
        pos = match.end()
    return mime.decode(), params


class Part(NamedTuple):
    """One multipart field; `start:end` is the span of its value in the body."""

    name: str
    value: bytes
    start: int
    end: int


def parse_multipart(body: bytes, boundary: bytes) -> list[Part]:
    """A strict multipart/form-data reader (RFC 7578): no preamble, CRLF only, no transfer encodings."""
    if not 1 <= len(boundary) <= 70:
        raise Uninspectable("bad multipart boundary")
    dash = b"--" + boundary
    delimiter = b"\r\n" + dash
    if not body.startswith(dash + b"\r\n"):
        raise _bad("The multipart body must start with its boundary line.")
    parts: list[Part] = []
    pos = len(dash) + 2
    while True:
        end = body.find(delimiter, pos)
        if end < 0:
            raise _bad("The multipart body has no closing boundary.")
        parts.append(_part(body, pos, end))
        after = end + len(delimiter)
        tail = body[after : after + 2]
        if tail == b"--":
            if body[after + 2 :] not in (b"", b"\r\n"):
                raise _bad("The multipart body has data after its closing boundary.")
            return parts
        if tail != b"\r\n":
            raise _bad("A multipart boundary line is followed by other data.")
        pos = after + 2


def _bad(detail: str) -> Refusal:
    return refuse(400, "bad_multipart", "body", detail)


def _part(body: bytes, start: int, end: int) -> Part:
    split = body.find(b"\r\n\r\n", start, end)
    if split < 0:
        raise _bad("A multipart part has no header section.")
    headers: dict[bytes, bytes] = {}
    for line in body[start:split].split(b"\r\n"):
        match = _HEADER.fullmatch(line)
        if match is None:
            raise _bad("A multipart part has a malformed header line.")
        name = match.group(1).lower()
        if name in headers:
            raise _bad("A multipart part repeats a header.")
        headers[name] = match.group(2)
    encoding = headers.get(b"content-transfer-encoding", b"binary").lower()
    if encoding not in (b"7bit", b"8bit", b"binary"):
        raise Uninspectable("a multipart part uses a Content-Transfer-Encoding")
    disposition = headers.get(b"content-disposition")
    if disposition is None:
        raise _bad("A multipart part has no Content-Disposition.")
    kind, params = _disposition(disposition)
    if kind != b"form-data" or "name" not in params:
        raise _bad("A multipart part is not form-data with a name.")
    name = params["name"].decode("utf-8", "surrogateescape")
    value_start = split + 4
    if id_kind(name) is not None and b"content-type" in headers:
        mime, ct_params = media_type(headers[b"content-type"])
        if mime != "text/plain" or ct_params.get("charset", b"utf-8").lower() not in (b"utf-8", b"us-ascii"):
            raise Uninspectable(f"the {name} part is not UTF-8 text")
    return Part(name, body[value_start:end], value_start, end)


def _disposition(value: bytes) -> tuple[bytes, dict[str, bytes]]:
    head, _, rest = value.partition(b";")
    params: dict[str, bytes] = {}
    rest = b";" + rest if rest else b""
    pos = 0
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if match is None:
            raise _bad("A multipart Content-Disposition has a malformed or escaped parameter.")
        name = match.group(1).lower().decode()
        if name.endswith("*") or name in params:
            raise _bad("A multipart Content-Disposition repeats a parameter or uses name*=.")
        raw = match.group(2)
        params[name] = raw[1:-1] if raw.startswith(b'"') else raw
        pos = match.end()
    return head.strip().lower(), params


def multipart_fields(parts: list[Part]) -> list[tuple[str, str]]:
    """(name, value) of the parts that could carry ids; other values stay undecoded."""
    return [(p.name, p.value.decode("utf-8", "surrogateescape")) for p in parts if _maybe_id(p.name)]


def _maybe_id(name: str) -> bool:
    return id_kind(name) is not None or id_kind(name.partition("[")[0]) is not None


def set_multipart(body: bytes, boundary: bytes, parts: list[Part], values: dict[str, str]) -> bytes | None:
    """The body with `values` for its id fields (replaced, else added before the close); None if unchanged."""
    dash = b"--" + boundary
    encoded = {kind: value.encode() for kind, value in values.items()}
    for kind, value in encoded.items():
        if b"\r" in value or b"\n" in value or dash in value:
            raise Uninspectable(f"{kind} cannot be written into this multipart body")
    out: list[bytes] = []
    pos = 0
    done: set[str] = set()
    for part in parts:
        kind = id_kind(part.name)
        if kind in encoded:
            done.add(kind)
            if part.value != encoded[kind]:
                out += [body[pos : part.start], encoded[kind]]
                pos = part.end
    closing = body.rindex(b"\r\n" + dash + b"--")
    added = [
        b"\r\n" + dash + b'\r\nContent-Disposition: form-data; name="' + kind.encode() + b'"\r\n\r\n' + encoded[kind]
        for kind in KINDS
        if kind in encoded and kind not in done
    ]
    if not out and not added:
        return None
    out += [body[pos:closing], *added, body[closing:]]
    return b"".join(out)
