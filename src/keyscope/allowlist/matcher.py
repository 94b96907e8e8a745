"""Match a request's raw path and method against the allowlist: the gateway's hot path.

`compile(endpoints)` builds a `Matcher` once; `Matcher.match(method, raw_path)` answers every request.

Semantics (each one covered by tests/test_matcher.py):

- `raw_path` is the path exactly as it arrived on the wire (ASGI `scope["raw_path"]`, bytes, or the same as
  str): still percent-encoded, without the query string. Nothing is decoded before matching, so `%2F` and
  `%5C` are never separators.
- A template is `/seg/seg/...` (`keyscope.allowlist.template`); a segment `{name}` is a parameter and matches
  exactly one non-empty segment.
- When several templates match, the one with a static segment at the first position where they differ wins
  (`/a/b/{y}` beats `/a/{x}/c` on `/a/b/c`); `/a/{x}/c` still matches `/a/z/c`: the walk backtracks.
- Matching is case-sensitive. A trailing slash, an empty segment (`//`), `.`, `..` and their percent-encoded
  forms (`%2e`, `.%2E`, ...) never match: static segments compare exactly, and parameter values are checked.
- A parameter value must be RFC 3986 `pchar`s but `;` (unreserved, sub-delims, `:`, `@`, `%XX`) whose decoded
  form is strict UTF-8 and holds no `/ \\ ; % ? #` and no control character (`answers.decode_value`). A value that fails is not a match (fail
  closed): a backend that decodes or strips path parameters (`..;x`, `..%2F`) must never see a different
  path than the one authorized. So raw newlines, spaces and bytes that are not ASCII never match, and never
  raise.
- The winning template is chosen from the path alone; if it does not list the method the answer is
  `MethodNotAllowed` with the methods it lists (sorted). HEAD is not implied by GET.

The answer is a `Match` (truthy), `NOT_FOUND` or a `MethodNotAllowed` (both falsy), so the caller's test is
`if result:` for the common case, then `result is NOT_FOUND`; `isinstance` works too (`answers`).

Why the shape: templates without parameters (most of the allowlist) sit in one dict keyed by the whole path,
as bytes and as str, mapping each method to a prebuilt `Match`, so a static hit is two dict lookups.
Templates with parameters form one trie per segment count, compiled into Python source (`trie`); a path
whose first segment starts none of them is refused before it is split. `Match.params` is built when read.
`Matcher.describe()` prints the tables and the generated source. Templates are parsed by `template`, the
grammar the loader checks, so whatever `endpoints.yaml` accepts compiles.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from keyscope.allowlist import template
from keyscope.allowlist.answers import NOT_FOUND, Match, MethodNotAllowed, Result
from keyscope.allowlist.model import Endpoint
from keyscope.allowlist.trie import Node, StaticTable, add, describe, generate

__all__ = ["NOT_FOUND", "Match", "Matcher", "MethodNotAllowed", "Result", "compile"]

_METHOD = re.compile(r"[A-Z]+")


class Matcher:
    """The compiled allowlist. `match` is the generated function itself, its tables its globals."""

    __slots__ = ("match", "_static", "_tries", "_source")

    def __init__(
        self,
        match: Callable[[str, bytes | str], Result],
        static: StaticTable,
        tries: dict[int, Node],
        source: str,
    ) -> None:
        self.match = match
        self._static = static
        self._tries = tries
        self._source = source

    def describe(self) -> str:
        """The compiled form, for debugging: the static table, each trie, and the generated source."""
        lines = ["static paths:"]
        for path, entry in self._static.items():
            if isinstance(path, str):
                methods = " ".join(m for m in entry if m is not None)
                lines.append(f"  {path}  [{methods}]")
        for count, root in sorted(self._tries.items()):
            lines.append(f"trie for {count - 1} segments:")
            describe(root, 1, lines)
        lines.append("generated source:")
        lines.append(self._source)
        return "\n".join(lines)


def compile(endpoints: Iterable[Endpoint]) -> Matcher:  # noqa: A001 - the issue names the API
    """Build the matcher; a template that could never match, or an ambiguous pair, raises ValueError."""
    by_static: dict[bytes, dict[str, Endpoint]] = {}
    tries: dict[int, Node] = {}
    for endpoint in endpoints:
        where = f"{endpoint.method} {endpoint.path!r}"
        if not _METHOD.fullmatch(endpoint.method):
            raise ValueError(f"{where}: method must be upper-case letters")
        try:
            segments, names = template.parse(endpoint.path)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if names:
            add(tries, endpoint, segments, names)
            continue
        methods = by_static.setdefault(b"/" + b"/".join(segments), {})  # type: ignore[arg-type]
        if endpoint.method in methods:
            raise ValueError(f"{where} is listed twice")
        methods[endpoint.method] = endpoint

    static: StaticTable = {}
    for path, methods in by_static.items():
        entry: dict[str | None, Match | MethodNotAllowed] = {m: Match((e, ()), []) for m, e in methods.items()}
        entry[None] = MethodNotAllowed(tuple(sorted(methods)))
        static[path] = static[path.decode("ascii")] = entry

    source, match = generate(static, tries)
    return Matcher(match, static, tries, source)
