"""The bounds on every input, in one place: each one is checked before the key is looked up where it can be.

A backend that meets more than it is willing to read does not refuse: it truncates. Node's `querystring` and
`qs` keep the first 1,000 parameters, PHP's `max_input_vars` 1,000, Tomcat's `maxParameterCount` 10,000, and
an id past that limit is silently not seen. keyscope's limits sit far below every such truncation, and
crossing one is a refusal, never a cut: what keyscope read is then all that any backend can read.

The header and target bounds also bound the memory one connection can hold before it is authenticated
(`keyscope.gateway.protocol` counts while the head arrives).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    header_bytes: int = 32 * 1024
    """Bytes of the request head's header lines (names and values), like nginx's 32 KiB buffers: 431 past it."""
    headers: int = 100
    """Header lines in one request: 431 past it."""
    target_bytes: int = 8192
    """Bytes of the request target (path and query): 414 past it."""
    params: int = 100
    """`&`-separated pieces of the query plus those of an urlencoded form, empty ones included (as `qs` counts
    them): 400 past it, far below the 1,000 at which Node and PHP start dropping parameters."""
    parts: int = 100
    """Parts of a multipart body: 400 past it."""
    json_members: int = 10_000
    """Members of all the objects of one JSON body together: 400 past it."""
    json_depth: int = 64
    """Nesting of a JSON body: 400 past it."""


DEFAULT = Limits()
