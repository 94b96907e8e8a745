"""Declared locations in a JSON document: where an object is, the objects a location names, the ones to create.

A declared location (`messages[].options.platform`) is read with exact member names: a backend that binds names
case-insensitively or by a naming strategy would read a member spelt otherwise (`Platform`) as the location,
one that does not would read none, so such a member is refused rather than looked past.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from keyscope.allowlist.table import JsonStep
from keyscope.scope.names import fold
from keyscope.scope.refusals import refuse

_tuple = tuple.__new__


def locate(doc: Any, objects: set[int]) -> dict[int, str]:
    """Where each of these objects is (`$`, `$.messages[0]`), by a walk in document order."""
    found: dict[int, str] = {}
    pending: list[tuple[Any, str]] = [(doc, "$")]
    while pending and len(found) < len(objects):
        node, where = pending.pop()
        if type(node) is dict:
            if id(node) in objects:
                found[id(node)] = where
            pending.extend((v, f"{where}.{k}") for k, v in reversed(node.items()) if type(v) in (dict, list))
        elif type(node) is list:
            pending.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(node))) if type(v) in (dict, list))
    return found


def where(path: tuple[str | int, ...]) -> str:
    return "$" + "".join([f"[{step}]" if type(step) is int else f".{step}" for step in path])


class Target(NamedTuple):
    """A declared location's object, or (obj None) the deepest existing object and the keys still missing."""

    path: tuple[str | int, ...]
    obj: dict[str, Any] | None
    parent: dict[str, Any] | None = None
    missing: tuple[str, ...] = ()


def resolve(doc: Any, steps: tuple[JsonStep, ...]) -> list[Target]:
    """The objects a declared location names, in document order; `[]` expands each element, an absent array
    yields none, an absent object is a Target to create."""
    if type(doc) is not dict:
        raise refuse(400, "bad_location", None, "The JSON body must be an object.")
    current: list[tuple[tuple[str | int, ...], dict[str, Any]]] = [((), doc)]
    missing: list[Target] = []
    for at, step in enumerate(steps):
        name, following = step.name, []
        for path, node in current:
            child = node.get(name)
            if child is None:
                if name not in node:
                    _refuse_misspelt(node, name, (*path, name))
                rest = steps[at:]
                if not any(later.each for later in rest):
                    missing.append(Target((*path, *(later.name for later in rest)), None, node,
                                          tuple(later.name for later in rest)))
            elif step.each:
                if type(child) is not list:
                    raise refuse(400, "bad_location", where((*path, name))[2:], "Expected an array here.")
                for index, element in enumerate(child):
                    if type(element) is not dict:
                        raise refuse(400, "bad_location", where((*path, name, index))[2:], "Expected an object here.")
                    following.append(((*path, name, index), element))
            elif type(child) is dict:
                following.append(((*path, name), child))
            else:
                raise refuse(400, "bad_location", where((*path, name))[2:], "Expected an object here.")
        current = following
    targets = [_tuple(Target, (path, node, None, ())) for path, node in current]
    if missing:  # in document order, among the objects found
        targets = sorted(targets + missing, key=lambda target: target.path)
    return targets


def _refuse_misspelt(node: dict[str, Any], name: str, here: tuple[str | int, ...]) -> None:
    """A declared location's member spelt otherwise (`Platform`, `filter_by`) is the location itself to a
    backend that binds names case-insensitively or by a naming strategy, and none to one that does not."""
    folded = fold(name)
    for key in node:
        if fold(key) == folded:
            raise refuse(400, "id_name_case", where((*here[:-1], key))[2:], f"Write {name} exactly as {name!r} here.")


def materialise(target: Target) -> dict[str, Any]:
    """The target's object, creating the missing ones (a `null` on the way counts as missing)."""
    if target.obj is not None:
        return target.obj
    node = target.parent
    assert node is not None
    for name in target.missing:
        child = node.get(name)
        if type(child) is not dict:
            child = node[name] = {}
        node = child
    return node
