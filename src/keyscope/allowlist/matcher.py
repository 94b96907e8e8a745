"""Match a request's raw path and method against the allowlist: the gateway's hot path.

`compile(endpoints)` builds a `Matcher` once; `Matcher.match(method, raw_path)` answers every request.

Semantics (each one covered by tests/test_matcher.py):

- `raw_path` is the path exactly as it arrived on the wire (ASGI `scope["raw_path"]`, bytes, or the same as
  str): still percent-encoded, without the query string. Nothing is decoded before matching, so `%2F` and
  `%5C` are never separators.
- A template is `/seg/seg/...`; a segment `{name}` is a parameter and matches exactly one non-empty segment.
- When several templates match, the one with a static segment at the first position where they differ wins
  (`/a/b/{y}` beats `/a/{x}/c` on `/a/b/c`); `/a/{x}/c` still matches `/a/z/c`: the walk backtracks.
- Matching is case-sensitive. A trailing slash, an empty segment (`//`), `.`, `..` and their percent-encoded
  forms (`%2e`, `.%2E`, ...) never match: static segments compare exactly, and parameter values are checked.
- A parameter value must be RFC 3986 `pchar`s (unreserved, sub-delims, `:`, `@`, `%XX`) whose decoded form is
  strict UTF-8 and holds no `/ \\ ; % ? #` and no control character. A value that fails is not a match (fail
  closed): a backend that decodes or strips path parameters (`..;x`, `..%2F`) must never see a different
  path than the one authorized. So raw newlines, spaces and bytes that are not ASCII never match, and never
  raise.
- The winning template is chosen from the path alone; if it does not list the method the answer is
  `MethodNotAllowed` with the methods it lists (sorted). HEAD is not implied by GET.

The answer is a `Match` (truthy), `NOT_FOUND` or a `MethodNotAllowed` (both falsy), so the caller's test is
`if result:` for the common case, then `result is NOT_FOUND`; `isinstance` works too.

Why the shape: templates without parameters (most of the allowlist) sit in one dict keyed by the whole path,
as bytes and as str, mapping each method to a prebuilt `Match`: a static hit costs two dict lookups.
Templates with parameters form one trie per segment count (static children in a dict, the parameter child
apart, methods at the leaves), compiled into Python source in the manner of falcon's CompiledRouter; a path
whose first segment starts none of them is refused before it is split. `Match.params` is built when read.
`Matcher.describe()` prints the tables and the generated source.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable, Iterable

from keyscope.allowlist.table import Endpoint

_PLAIN = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,=:@"
_VALUE = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,=:@]|%[0-9A-Fa-f]{2})+")
_FORBIDDEN_DECODED = re.compile(r"[\x00-\x1f\x7f/\\;%?#]")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_METHOD = re.compile(r"[A-Z]+")
_CHAIN = 6  # static children compared in an if/elif chain up to this many; a dict of functions beyond


class Match:
    """The request is for `endpoint`.

    `params` (percent-decoded) and `raw_params` (exactly as on the wire) are built when read: the gateway's
    hot path needs only `endpoint`, and every value was already checked before the answer was a match.
    """

    __slots__ = ("endpoint", "_spec", "_segments")

    def __init__(self, target: tuple[Endpoint, tuple[tuple[str, int], ...]], segments: list[bytes]) -> None:
        self.endpoint, self._spec = target
        self._segments = segments

    @property
    def params(self) -> dict[str, str]:
        params = {}
        for name, i in self._spec:
            raw = self._segments[i]
            params[name] = raw.decode("ascii") if b"%" not in raw else _decode(raw)[1]  # type: ignore[index]
        return params

    @property
    def raw_params(self) -> dict[str, str]:
        params = {}
        for name, i in self._spec:
            params[name] = self._segments[i].decode("ascii")
        return params

    def __repr__(self) -> str:
        return f"Match({self.endpoint.method} {self.endpoint.path}, params={self.params!r})"


class MethodNotAllowed:
    """The path matches a template that does not list the request's method."""

    __slots__ = ("allowed",)

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.allowed = allowed

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"MethodNotAllowed(allowed={self.allowed!r})"


class _NotFound:
    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NOT_FOUND"


NOT_FOUND = _NotFound()
Result = Match | MethodNotAllowed | _NotFound


class _Leaf:
    """Where a parameterised shape ends: which segments are parameters, and each method's endpoint."""

    __slots__ = ("indices", "methods", "not_allowed")

    def __init__(self, indices: tuple[int, ...]) -> None:
        self.indices = indices
        self.methods: dict[str, tuple[Endpoint, tuple[tuple[str, int], ...]]] = {}
        self.not_allowed = MethodNotAllowed(())


class _Node:
    __slots__ = ("static", "param", "leaf")

    def __init__(self) -> None:
        self.static: dict[bytes, _Node] = {}
        self.param: _Node | None = None
        self.leaf: _Leaf | None = None


class Matcher:
    """The compiled allowlist. `match` is the generated function itself (its tables are its globals), so a call
    costs no attribute lookups."""

    __slots__ = ("match", "_static", "_tries", "_source")

    def __init__(
        self,
        match: Callable[[str, bytes | str], Result],
        static: dict[bytes | str, dict[str | None, Match | MethodNotAllowed]],
        tries: dict[int, _Node],
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
            _describe_node(root, 1, lines)
        lines.append("generated source:")
        lines.append(self._source)
        return "\n".join(lines)


def _describe_node(node: _Node, depth: int, lines: list[str]) -> None:
    pad = "  " * depth
    for segment, child in sorted(node.static.items()):
        lines.append(f"{pad}{segment.decode()}")
        _describe_node(child, depth + 1, lines)
    if node.param is not None:
        lines.append(f"{pad}{{param}}")
        _describe_node(node.param, depth + 1, lines)
    if node.leaf is not None:
        methods = " ".join(f"{m}={e.path}" for m, (e, _) in sorted(node.leaf.methods.items()))
        lines.append(f"{pad}-> {methods}")


def _parse(endpoint: Endpoint) -> tuple[tuple[bytes | None, ...], tuple[str, ...]]:
    """Split a template into segments (None for a parameter) and parameter names; refuse what cannot match."""
    where = f"{endpoint.method} {endpoint.path!r}"
    if not _METHOD.fullmatch(endpoint.method):
        raise ValueError(f"{where}: method must be upper-case letters")
    if not endpoint.path.startswith("/"):
        raise ValueError(f"{where}: template must start with '/'")
    segments: list[bytes | None] = []
    names: list[str] = []
    for text in endpoint.path[1:].split("/"):
        param = _PARAM.fullmatch(text)
        if param is not None:
            if param.group(1) in names:
                raise ValueError(f"{where}: parameter {{{param.group(1)}}} appears twice")
            names.append(param.group(1))
            segments.append(None)
            continue
        raw = text.encode("utf-8")
        if not raw or raw.translate(None, _PLAIN) or raw in (b".", b".."):
            raise ValueError(f"{where}: segment {text!r} is empty, a dot segment, or not plain characters")
        segments.append(raw)
    return tuple(segments), tuple(names)


def _decode(raw: bytes) -> tuple[str, str] | None:
    """(raw, percent-decoded) for a parameter value, or None when it must not match (see the module docstring)."""
    if _VALUE.fullmatch(raw) is None:
        return None
    text = raw.decode("ascii")
    if b"%" not in raw:
        return None if text == "." or text == ".." else (text, text)
    head, *rest = raw.split(b"%")
    decoded = bytearray(head)
    for part in rest:
        decoded += bytes.fromhex(part[:2].decode("ascii"))
        decoded += part[2:]
    try:
        value = decoded.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if value == "." or value == ".." or _FORBIDDEN_DECODED.search(value):
        return None
    return text, value


def compile(endpoints: Iterable[Endpoint]) -> Matcher:  # noqa: A001 - the issue names the API
    """Build the matcher; a template that could never match, or an ambiguous pair, raises ValueError."""
    by_static: dict[bytes, dict[str, Endpoint]] = {}
    tries: dict[int, _Node] = {}
    for endpoint in endpoints:
        segments, names = _parse(endpoint)
        if not names:
            methods = by_static.setdefault(b"/" + b"/".join(segments), {})  # type: ignore[arg-type]
            if endpoint.method in methods:
                raise ValueError(f"{endpoint.method} {endpoint.path!r} is listed twice")
            methods[endpoint.method] = endpoint
            continue
        node = tries.setdefault(len(segments) + 1, _Node())
        for segment in segments:
            if segment is None:
                node.param = node.param or _Node()
                node = node.param
            else:
                node = node.static.setdefault(segment, _Node())
        if node.leaf is None:
            node.leaf = _Leaf(tuple(i for i, s in enumerate(segments, 1) if s is None))
        if endpoint.method in node.leaf.methods:
            other = node.leaf.methods[endpoint.method][0].path
            raise ValueError(f"{endpoint.method} {endpoint.path!r} and {other!r} match the same paths")
        node.leaf.methods[endpoint.method] = (endpoint, tuple(zip(names, node.leaf.indices)))
        node.leaf.not_allowed = MethodNotAllowed(tuple(sorted(node.leaf.methods)))

    static: dict[bytes | str, dict[str | None, Match | MethodNotAllowed]] = {}
    for path, methods in by_static.items():
        entry: dict[str | None, Match | MethodNotAllowed] = {m: Match((e, ()), []) for m, e in methods.items()}
        entry[None] = MethodNotAllowed(tuple(sorted(methods)))
        static[path] = static[path.decode("ascii")] = entry

    source, match = _generate(static, tries)
    return Matcher(match, static, tries, source)


def _generate(
    static: dict[bytes | str, dict[str | None, Match | MethodNotAllowed]], tries: dict[int, _Node]
) -> tuple[str, Callable[[str, bytes | str], Result]]:
    """Python source for `match`: one dict lookup for static paths, then nested ifs over the segments.

    The ifs fall through from static children to the parameter child, which is the backtracking. A node with
    many static children dispatches through a dict, to leaves or to one function per child subtree. Paths
    whose first segment starts no parameterised template are refused before they are split.
    """
    namespace: dict[str, object] = {"static_get": static.get, "NOT_FOUND": NOT_FOUND, "Match": Match, "decode": _decode}
    tables: dict[str, dict[bytes, str]] = {}
    functions: list[list[str]] = []

    def constant(value: object) -> str:
        name = f"k{len(namespace)}"
        namespace[name] = value
        return name

    def check(indices: tuple[int, ...], pad: str, out: list[str]) -> None:
        for i in indices:
            out.append(f"{pad}if not s{i}.replace(b'-', b'').isalnum() and decode(s{i}) is None:")
            out.append(f"{pad}    return NOT_FOUND")

    def finish(leaf: _Leaf, pad: str, out: list[str]) -> None:
        check(leaf.indices, pad, out)
        for method, target in sorted(leaf.methods.items()):
            out.append(f"{pad}if method == {method!r}:")
            out.append(f"{pad}    return Match({constant(target)}, s)")
        out.append(f"{pad}return {constant(leaf.not_allowed)}")

    def emit(node: _Node, depth: int, indent: int, out: list[str]) -> None:
        pad = "    " * indent
        if node.leaf is not None:
            finish(node.leaf, pad, out)
            return
        out.append(f"{pad}s{depth} = s[{depth}]")
        children = sorted(node.static.items(), key=lambda item: (-_weight(item[1]), item[0]))
        if 0 < len(children) <= _CHAIN:
            for i, (segment, child) in enumerate(children):
                out.append(f"{pad}{'if' if i == 0 else 'elif'} s{depth} == {segment!r}:")
                emit(child, depth + 1, indent + 1, out)
        elif children and children[0][1].leaf is not None:
            out.append(f"{pad}leaf = {constant({seg: child.leaf for seg, child in children})}.get(s{depth})")
            out.append(f"{pad}if leaf is not None:")
            check(children[0][1].leaf.indices, pad + "    ", out)  # type: ignore[union-attr]
            out.append(f"{pad}    found = leaf.methods.get(method)")
            out.append(f"{pad}    return leaf.not_allowed if found is None else Match(found, s)")
        elif children:
            table = constant({})
            tables[table] = {}
            for segment, child in children:
                function = f"walk{len(functions)}"
                body = [f"def {function}(method, s):"]
                body += [f"    s{i} = s[{i}]" for i in range(1, depth + 1)]
                functions.append(body)
                emit(child, depth + 1, 1, body)
                body.append("    return None")
                tables[table][segment] = function
            out.append(f"{pad}found = {table}.get(s{depth})")
            out.append(f"{pad}if found is not None:")
            out.append(f"{pad}    found = found(method, s)")
            out.append(f"{pad}    if found is not None:")
            out.append(f"{pad}        return found")
        if node.param is not None:
            out.append(f"{pad}if s{depth}:")
            emit(node.param, depth + 1, indent + 1, out)

    body = [
        "def match(method, raw_path):",
        "    entry = static_get(raw_path)",
        "    if entry is not None:",
        "        return entry.get(method) or entry[None]",
        "    if raw_path.__class__ is str:",
        "        raw_path = raw_path.encode('utf-8', 'surrogatepass')",
    ]
    if tries and all(root.param is None for root in tries.values()):
        prefixes = tuple(sorted({b"/" + seg + b"/" for root in tries.values() for seg in root.static}))
        body += [f"    if not raw_path.startswith({constant(prefixes)}):", "        return NOT_FOUND"]
        body += ["    s = raw_path.split(b'/')"]
    else:
        body += ["    s = raw_path.split(b'/')", "    if s[0]:", "        return NOT_FOUND"]
    body.append("    count = len(s)")
    for i, (count, root) in enumerate(sorted(tries.items(), key=lambda item: -_weight(item[1]))):
        body.append(f"    {'if' if i == 0 else 'elif'} count == {count}:")
        emit(root, 1, 2, body)
    body.append("    return NOT_FOUND")
    functions.insert(0, body)
    source = "\n\n".join("\n".join(lines) for lines in functions) + "\n"
    exec(builtins.compile(source, "<keyscope.allowlist.matcher>", "exec"), namespace)  # noqa: S102 - our own source
    for table, entries in tables.items():
        namespace[table] = {segment: namespace[function] for segment, function in entries.items()}
    return source, namespace["match"]  # type: ignore[return-value]


def _weight(node: _Node) -> int:
    """How many templates end below a node: busier branches are tested first (order is not semantics)."""
    own = len(node.leaf.methods) if node.leaf is not None else 0
    below = node.param is not None and _weight(node.param)
    return own + below + sum(_weight(child) for child in node.static.values())
