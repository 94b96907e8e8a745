"""The parameterised templates as tries, and the Python source generated from them: the matcher's walk.

There is one trie per segment count: static children in a dict, the parameter child apart, methods at the
leaves. `generate()` compiles the tries into one function, `match(method, raw_path)`, in the manner of falcon's
CompiledRouter: nested ifs over the split path's segments, falling through from the static children to the
parameter child, which is the backtracking; a node with many static children dispatches through a dict, to
leaves or to one function per child subtree. The tables the source reads are its globals.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable

from keyscope.allowlist.answers import NOT_FOUND, Match, MethodNotAllowed, Result, Target, decode_value
from keyscope.allowlist.model import Endpoint
from keyscope.allowlist.template import Segments

CHAIN = 6
"""Static children are compared in an if/elif chain up to this many, through a dict beyond."""

StaticTable = dict[bytes | str, dict[str | None, Match | MethodNotAllowed]]
"""Templates without parameters, by whole path (bytes and str): each method's answer, None for the rest."""


class Leaf:
    """Where a parameterised shape ends: which segments are parameters, and each method's endpoint."""

    __slots__ = ("indices", "methods", "not_allowed")

    def __init__(self, indices: tuple[int, ...]) -> None:
        self.indices = indices
        self.methods: dict[str, Target] = {}
        self.not_allowed = MethodNotAllowed(())


class Node:
    """A segment position: its static children, its parameter child, and the leaf when a shape ends here."""

    __slots__ = ("static", "param", "leaf")

    def __init__(self) -> None:
        self.static: dict[bytes, Node] = {}
        self.param: Node | None = None
        self.leaf: Leaf | None = None


def describe(node: Node, depth: int, lines: list[str]) -> None:
    """Append the trie below `node` to `lines`, one segment a line, indented by depth."""
    pad = "  " * depth
    for segment, child in sorted(node.static.items()):
        lines.append(f"{pad}{segment.decode()}")
        describe(child, depth + 1, lines)
    if node.param is not None:
        lines.append(f"{pad}{{param}}")
        describe(node.param, depth + 1, lines)
    if node.leaf is not None:
        methods = " ".join(f"{m}={e.path}" for m, (e, _) in sorted(node.leaf.methods.items()))
        lines.append(f"{pad}-> {methods}")


def add(tries: dict[int, Node], endpoint: Endpoint, segments: Segments, names: tuple[str, ...]) -> None:
    """Put a parameterised template into the trie for its segment count; ValueError if it clashes."""
    node = tries.setdefault(len(segments) + 1, Node())
    for segment in segments:
        if segment is None:
            node.param = node.param or Node()
            node = node.param
        else:
            node = node.static.setdefault(segment, Node())
    if node.leaf is None:
        node.leaf = Leaf(tuple(i for i, s in enumerate(segments, 1) if s is None))
    if endpoint.method in node.leaf.methods:
        other = node.leaf.methods[endpoint.method][0].path
        raise ValueError(f"{endpoint.method} {endpoint.path!r} and {other!r} match the same paths")
    node.leaf.methods[endpoint.method] = (endpoint, tuple(zip(names, node.leaf.indices)))
    node.leaf.not_allowed = MethodNotAllowed(tuple(sorted(node.leaf.methods)))


def generate(static: StaticTable, tries: dict[int, Node]) -> tuple[str, Callable[[str, bytes | str], Result]]:
    """Python source for `match`: one dict lookup for static paths, then nested ifs over the segments.

    The ifs fall through from static children to the parameter child, which is the backtracking. A node with
    many static children dispatches through a dict, to leaves or to one function per child subtree. Paths
    whose first segment starts no parameterised template are refused before they are split.
    """
    namespace: dict[str, object] = {
        "static_get": static.get, "NOT_FOUND": NOT_FOUND, "Match": Match, "decode": decode_value,
    }
    tables: dict[str, dict[bytes, str]] = {}
    functions: list[list[str]] = []

    def constant(value: object) -> str:
        name = f"k{len(namespace)}"
        namespace[name] = value
        return name

    def check(indices: tuple[int, ...], pad: str, out: list[str]) -> None:
        # Letters, digits and `-` make a valid value without decode_value()'s full rule.
        for i in indices:
            out.append(f"{pad}if not s{i}.replace(b'-', b'').isalnum() and decode(s{i}) is None:")
            out.append(f"{pad}    return NOT_FOUND")

    def finish(leaf: Leaf, pad: str, out: list[str]) -> None:
        check(leaf.indices, pad, out)
        for method, target in sorted(leaf.methods.items()):
            out.append(f"{pad}if method == {method!r}:")
            out.append(f"{pad}    return Match({constant(target)}, s)")
        out.append(f"{pad}return {constant(leaf.not_allowed)}")

    def emit(node: Node, depth: int, indent: int, out: list[str]) -> None:
        pad = "    " * indent
        if node.leaf is not None:
            finish(node.leaf, pad, out)
            return
        out.append(f"{pad}s{depth} = s[{depth}]")
        children = sorted(node.static.items(), key=lambda item: (-weight(item[1]), item[0]))
        if 0 < len(children) <= CHAIN:
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
    for i, (count, root) in enumerate(sorted(tries.items(), key=lambda item: -weight(item[1]))):
        body.append(f"    {'if' if i == 0 else 'elif'} count == {count}:")
        emit(root, 1, 2, body)
    body.append("    return NOT_FOUND")
    functions.insert(0, body)
    source = "\n\n".join("\n".join(lines) for lines in functions) + "\n"
    exec(builtins.compile(source, "<keyscope.allowlist.matcher>", "exec"), namespace)  # noqa: S102 - our own source
    for table, entries in tables.items():
        namespace[table] = {segment: namespace[function] for segment, function in entries.items()}
    return source, namespace["match"]  # type: ignore[return-value]


def weight(node: Node) -> int:
    """How many templates end below a node: busier branches are tested first (order is not semantics)."""
    own = len(node.leaf.methods) if node.leaf is not None else 0
    below = node.param is not None and weight(node.param)
    return own + below + sum(weight(child) for child in node.static.values())
