"""Content-Type parameters and multipart/form-data bodies, read strictly and written back.

Multipart parsers disagree on what delimits a part: RFC 7578 says CRLF `--boundary`, Werkzeug also splits on
LF and CR `--boundary`, PHP on LF. A body in which `--boundary` appears anywhere but at the start of a CRLF
delimiter line is refused, so every parser finds the same parts. So is what parsers resolve differently: a
preamble, transport padding, a transfer encoding, `name*=` (RFC 5987), escapes in a quoted name, a repeated
header or parameter, more parts than the limit, and an id-named part that carries `filename` (servlets,
multer and busboy make it a file, so the backend sees no id where keyscope saw one).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from keyscope.core.errors import Refusal
from keyscope.scope.names import KINDS, classify
from keyscope.scope.refusals import Uninspectable, refuse, too_many

_TOKEN = rb"[A-Za-z0-9!#$&+\-.^_`|~*']+"
_PARAM = re.compile(rb";[ \t]*(" + _TOKEN + rb")[ \t]*=[ \t]*(\"[^\"\\\r\n]*\"|" + _TOKEN + rb")[ \t]*")
_MEDIA_TYPE = re.compile(_TOKEN + rb"/" + _TOKEN)
_HEADER = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\r\n]*?)[ \t]*")
_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


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
        value = match.group(2)
        if name.endswith("*") or value.startswith(b"'"):
            # Django and PHP take `boundary*=` (RFC 2231) over `boundary=`; PHP unquotes 'single quotes'
            raise Uninspectable(f"Content-Type has a parameter {name} that parsers read differently")
        params[name] = value.strip(b'"')
        pos = match.end()
    return mime.decode(), params


class Part(NamedTuple):
    """One multipart field; `start:end` is the span of its value in the body."""

    name: str
    value: bytes
    start: int
    end: int
    file: bool


def parse(body: bytes, boundary: bytes, limit: int) -> list[Part]:
    """The parts of a multipart/form-data body that every parser splits alike, else a 400 (or Uninspectable)."""
    if not _BOUNDARY.fullmatch(boundary):
        raise Uninspectable("bad multipart boundary")
    dash = b"--" + boundary
    if not body.startswith(dash + b"\r\n"):
        raise _bad("The multipart body must start with its boundary line.")
    at = body.find(dash, 1)
    while at >= 0:
        if body[at - 2 : at] != b"\r\n":
            raise _bad("The multipart body holds its boundary other than at the start of a CRLF line.")
        at = body.find(dash, at + 1)
    delimiter = b"\r\n" + dash
    parts: list[Part] = []
    pos = len(dash) + 2
    while True:
        end = body.find(delimiter, pos)
        if end < 0:
            raise _bad("The multipart body has no closing boundary.")
        if len(parts) == limit:
            raise too_many("parts", limit)
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
    special = classify(name)
    if special is not None and special in KINDS:
        if "filename" in params:
            raise refuse(400, "id_file", name, f"The {name} part carries a filename: some backends read it as a file.")
        if b"content-type" in headers:
            mime, ct_params = media_type(headers[b"content-type"])
            if mime != "text/plain" or ct_params.get("charset", b"utf-8").lower() not in (b"utf-8", b"us-ascii"):
                raise Uninspectable(f"the {name} part is not UTF-8 text")
    return Part(name, body[split + 4 : end], split + 4, end, "filename" in params)


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
        if raw.startswith(b"'"):
            raise _bad("A multipart Content-Disposition single-quotes a parameter (PHP unquotes it, others do not).")
        params[name] = raw[1:-1] if raw.startswith(b'"') else raw
        pos = match.end()
    return head.strip().lower(), params


def fields(parts: list[Part]) -> list[tuple[str, str]]:
    """(name, value) of the parts whose names matter (ids and refused names); other values stay undecoded."""
    return [(p.name, p.value.decode("utf-8", "surrogateescape")) for p in parts if classify(p.name) is not None]


def rewrite(body: bytes, boundary: bytes, parts: list[Part], values: dict[str, str]) -> bytes | None:
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
        kind = classify(part.name)
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
