"""The `keyscope` console script: the management API, driven in-process or over HTTP.

Each command is a request to the admin ASGI app, called directly (no server, no network) with a one-time admin
token, or, with `--url` and `--token`, sent to a running gateway (keyscope.cli.remote): the transport is the
only difference. The API is the one implementation of every rule and of the JSON shapes, so `--json` prints
exactly what the HTTP API answers for the same operation; this module only turns arguments into requests and
answers into text for people.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from keyscope import __version__
from keyscope.control import admin
from keyscope.core.types import ASGIApp
from keyscope.decide.auth import KeyAuthenticator
from keyscope.store import Store, StoreError, store_from_url
from keyscope.store.sqlite import StoreMissing

DEFAULT_STORE = "sqlite:///keyscope.db"
SECRET_FIELD = "apiKeySecret"
ACTIONS = ("FILL", "FORCE")
KEY_PREFIX_MIN = 8
"""A key may be named by this many leading characters of its id, or more."""


# the management API, in-process ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any  # the parsed JSON, the text of a non-JSON body, or None when empty


class Refused(Exception):
    """The API answered with an error: the CLI prints its text and exits 1."""

    def __init__(
        self,
        answer: Answer,
        hint: str | None = None,
        message: str | None = None,
        flags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(answer.status)
        self.answer = answer
        self.hint = hint
        self.message = message  # the web interface's wording for this refusal, in place of the API's headline
        self.flags = flags or {}  # API field (or its prefix, `platform[1]`) -> the option that gave it


class UsageError(Exception):
    """A command line that argparse accepts but that asks for nothing: exit 2, like argparse's own errors."""


class Failed(Exception):
    """An error found by the CLI itself while running a command (a key that is not there, an ambiguous name):
    one line on stderr, exit `status`."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class StoreProblem(Exception):
    """The store URL is unusable or the store cannot be opened: one line, exit 2."""


class StoreAbsent(StoreProblem):
    """The SQLite file does not exist (and nobody asked to create it)."""


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


Transport = Callable[[str, str, Any, dict[str, str]], Awaitable[tuple[int, bytes]]]
"""(method, path, JSON body or None, query) -> (status, body bytes): the one thing in-process and remote differ in."""


def in_process(app: ASGIApp, token: str) -> Transport:
    """The admin app, called in-process as admin with a token made for this one run."""

    async def transport(method: str, path: str, body: Any, query: dict[str, str]) -> tuple[int, bytes]:
        status, _, raw = await admin.call(app, method, path, body, query, token)
        return status, raw

    return transport


@dataclass(frozen=True, slots=True)
class Api:
    """The management API through a transport: in-process (`in_process`) or a gateway's (`cli_remote.remote`)."""

    transport: Transport

    async def __call__(
        self, method: str, path: str, query: dict[str, str | None] | None = None, body: object = None
    ) -> Any:
        """The answer's body; any status outside 2xx raises Refused."""
        given = {name: value for name, value in (query or {}).items() if value is not None}
        status, raw = await self.transport(method, path, body, given)
        answer = Answer(status, _decode(raw))
        if not 200 <= status < 300:
            raise Refused(answer)
        return answer.body


def refused_fields(answer: Answer) -> set[str]:
    body = answer.body if isinstance(answer.body, dict) else {}
    exception = (body.get("requestError") or {}).get("serviceException") or {}
    return {*(exception.get("validationErrors") or {}), *(v.get("property") for v in body.get("violations") or [])}


def flag_for(field: str, flags: dict[str, str]) -> str | None:
    """The option that gave `field` (`platform[1].action` -> `--link transactional::force`), if known."""
    for name in sorted(flags, key=len, reverse=True):
        if field == name or field.startswith((f"{name}.", f"{name}[")):
            return flags[name]
    return None


def error_lines(answer: Answer, message: str | None = None, flags: dict[str, str] | None = None) -> list[str]:
    """The API's own error text, in either family: a headline, then one `field: message` line per field.

    `message` replaces the headline with the web interface's wording; `flags` names, on each field's line,
    the command-line option that field came from."""
    lines = _error_lines(answer)
    if message is not None:
        lines[0] = f"keyscope: refused: {message} (HTTP {answer.status})"
    for index, line in enumerate(lines[1:], 1):
        field = line.strip().split(": ", 1)[0]
        flag = flag_for(field, flags or {})
        if flag is not None:
            lines[index] = f"  {flag}: {line.strip()}"
    return lines


def _error_lines(answer: Answer) -> list[str]:
    body = answer.body
    headline = f"HTTP {answer.status}"
    fields: list[str] = []
    if isinstance(body, dict):
        exception = (body.get("requestError") or {}).get("serviceException")
        if isinstance(exception, dict):
            headline = f"{exception.get('text') or exception.get('messageId')} (HTTP {answer.status})"
            for field, messages in (exception.get("validationErrors") or {}).items():
                for message in messages if isinstance(messages, list) else [messages]:
                    fields.append(f"{field}: {message}")
        elif "errorCode" in body:
            headline = f"{body.get('description') or body['errorCode']} (HTTP {answer.status})"
            for violation in body.get("violations") or []:
                fields.append(f"{violation.get('property')}: {violation.get('violation')}")
    elif isinstance(body, str) and body.strip():
        headline = f"{body.strip()} (HTTP {answer.status})"
    return [f"keyscope: refused: {headline}", *(f"  {line}" for line in fields)]


# text for people ------------------------------------------------------------------------------------


def text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(text(item) for item in value) if value else "-"
    return str(value)


def table(headers: Sequence[str] | None, rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns, two spaces apart, under a header line unless `headers` is None."""
    lines = [*([headers] if headers is not None else []), *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))] if lines else []
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def record(obj: dict[str, Any]) -> str:
    """One object as `field  value` rows; lists of objects become a table below. Never shows a secret."""
    rows = []
    nested = []
    for field, value in obj.items():
        if field == SECRET_FIELD:
            continue
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            nested.append((field, value))
        else:
            rows.append((field, text(value)))
    parts = [table(None, rows)] if rows else []
    for field, items in nested:
        headers = list(dict.fromkeys(name for item in items for name in item))
        parts.append(f"{field}:\n" + table(headers, [[text(item.get(h)) for h in headers] for item in items]))
    return "\n".join(parts)


def links(key: dict[str, Any]) -> str:
    """A key's entries in the `--link` syntax, so what a list shows can be pasted back."""
    platform = key.get("platform") or []
    if not platform:
        return "(primary)" if key.get("enabled") else "(none)"
    spelled = []
    for entry in platform:
        parts = [entry.get("applicationId") or "", entry.get("entityId") or "", entry.get("action") or ""]
        while len(parts) > 1 and not parts[-1]:
            parts.pop()
        spelled.append(":".join(parts))
    return ", ".join(spelled)


def paging_line(paging: dict[str, Any], shown: int) -> str:
    total = paging.get("totalResults", paging.get("totalCount"))
    return f"page {paging.get('page')} of {paging.get('totalPages')}, {shown} shown, {total} in total"


# commands -------------------------------------------------------------------------------------------

Command = Callable[[Api, argparse.Namespace], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Kind:
    """Applications and entities are the same resource under two names."""

    noun: str
    path: str
    id_field: str
    name_field: str


APPS = Kind("application", "/provisioning/1/applications", "applicationId", "applicationName")
ENTITIES = Kind("entity", "/provisioning/1/entities", "entityId", "entityName")
ASSOCIATIONS = "/provisioning/1/associations"
KEYS = "/settings/2/api-keys"


def emit(args: argparse.Namespace, body: Any, human: str) -> None:
    if args.json:
        if body is not None:
            print(json.dumps(body, indent=2, ensure_ascii=False))
    elif human:
        print(human)


async def worded(
    call: Awaitable[Any], messages: dict[int, str], flags: dict[str, str] | None = None
) -> Any:
    """`call`'s answer; a refusal with a status in `messages` is told in the web interface's words, and
    each refused field names the option it came from (`flags`)."""
    try:
        return await call
    except Refused as refusal:
        raise Refused(
            refusal.answer, refusal.hint, messages.get(refusal.answer.status, refusal.message), flags
        ) from None


def kind_commands(kind: Kind) -> dict[str, Command]:
    def item_path(ident: str) -> str:
        return f"{kind.path}/{ident}"

    async def create(api: Api, args: argparse.Namespace) -> None:
        body = {kind.id_field: args.id}
        if args.name is not None:
            body[kind.name_field] = args.name
        exists = f"An {kind.noun} with the id {args.id!r} already exists."
        await worded(api("POST", kind.path, body=body), {409: exists}, {kind.name_field: "--name"})
        created = await api("GET", item_path(args.id))
        emit(args, created, f"created {kind.noun} {args.id}\n{record(created)}")

    async def list_(api: Api, args: argparse.Namespace) -> None:
        page = await api("GET", kind.path, {"page": args.page, "size": args.size})
        rows = [[text(item.get(kind.id_field)), text(item.get(kind.name_field))] for item in page["results"]]
        human = table((f"{kind.noun.upper()} ID", "NAME"), rows)
        emit(args, page, f"{human}\n{paging_line(page['paging'], len(rows))}")

    async def show(api: Api, args: argparse.Namespace) -> None:
        obj = await api("GET", item_path(args.id))
        emit(args, obj, record(obj))

    async def rename(api: Api, args: argparse.Namespace) -> None:
        await api("PUT", item_path(args.id), body={kind.name_field: args.name})
        obj = await api("GET", item_path(args.id))
        emit(args, obj, f"renamed {kind.noun} {args.id}\n{record(obj)}")

    async def delete(api: Api, args: argparse.Namespace) -> None:
        report = await api("DELETE", item_path(args.id))
        human = f"deleted {kind.noun} {args.id}"
        if isinstance(report, dict) and report:
            human += "; the cascade removed:\n" + record(report)
        emit(args, report, human)

    return {"create": create, "list": list_, "show": show, "rename": rename, "delete": delete}


def association_body(args: argparse.Namespace) -> dict[str, str | None]:
    return {
        "resourceType": args.resource_type,
        "channel": args.channel,
        "applicationId": args.application,
        "entityId": args.entity,
        "resourceId": args.resource_id,
    }


def association_row(item: dict[str, Any]) -> list[str]:
    return [text(item.get(f)) for f in ("resourceType", "channel", "resourceId", "applicationId", "entityId")]


ASSOCIATION_HEADERS = ("RESOURCE TYPE", "CHANNEL", "RESOURCE ID", "APPLICATION", "ENTITY")


async def association_create(api: Api, args: argparse.Namespace) -> None:
    body = association_body(args)
    flags = {
        "resourceType": "--resource-type",
        "channel": "--channel",
        "applicationId": "--application",
        "entityId": "--entity",
        "resourceId": "--resource-id",
    }
    messages = {409: "This resource is already associated.", 404: "The application or entity does not exist."}
    answer = await worded(api("POST", ASSOCIATIONS, body=body), messages, flags)
    created = answer if answer is not None else await api("GET", f"{ASSOCIATIONS}/single", body)
    emit(args, created, "created association\n" + table(ASSOCIATION_HEADERS, [association_row(created)]))


async def association_list(api: Api, args: argparse.Namespace) -> None:
    query = {**association_body(args), "page": args.page, "size": args.size}
    page = await api("GET", ASSOCIATIONS, query)
    rows = [association_row(item) for item in page["results"]]
    emit(args, page, f"{table(ASSOCIATION_HEADERS, rows)}\n{paging_line(page['paging'], len(rows))}")


async def association_show(api: Api, args: argparse.Namespace) -> None:
    obj = await api("GET", f"{ASSOCIATIONS}/single", association_body(args))
    emit(args, obj, record(obj))


async def association_delete(api: Api, args: argparse.Namespace) -> None:
    answer = await api("DELETE", ASSOCIATIONS, body=association_body(args))
    emit(args, answer, "deleted association")


def parse_link(spelled: str) -> dict[str, str | None]:
    """`APP[:ENTITY][:ACTION]`; an empty part is null (`:ENTITY` links an entity alone, `APP::FILL` an action)."""
    parts = spelled.split(":")
    if len(parts) > 3:
        raise argparse.ArgumentTypeError(f"{spelled!r}: expected APP[:ENTITY][:ACTION]")
    parts += [""] * (3 - len(parts))
    application, entity, action = (part or None for part in parts)
    if action is not None and action not in ACTIONS:
        raise argparse.ArgumentTypeError(f"{spelled!r}: the action must be FILL or FORCE (upper case), not {action!r}")
    entry: dict[str, str | None] = {"applicationId": application, "entityId": entity}
    if action is not None:
        entry["action"] = action
    return entry


def action_choice(value: str) -> str:
    """`--action`: FILL or FORCE, spelled as the API and `keys list` spell them (so `fill` is refused here,
    with the right spelling, rather than by the server)."""
    if value not in ACTIONS:
        hint = f"; did you mean {value.upper()}?" if value.upper() in ACTIONS else ""
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose FILL or FORCE, upper case{hint})")
    return value


KEY_FLAGS = {"name": "--name", "allowedIPs": "--allowed-ip", "validFrom": "--valid-from", "validTo": "--valid-to"}


def link_flags(platform_flags: Sequence[str]) -> dict[str, str]:
    """`platform[i]` -> the option that made the i-th entry; `platform` itself -> all of them."""
    flags = {f"platform[{index}]": flag for index, flag in enumerate(platform_flags)}
    if platform_flags:
        flags["platform"] = " / ".join(dict.fromkeys(platform_flags))
    return flags


def spell_link(entry: dict[str, Any]) -> str:
    parts = [entry.get("applicationId") or "", entry.get("entityId") or "", entry.get("action") or ""]
    while len(parts) > 1 and not parts[-1]:
        parts.pop()
    return ":".join(parts)


def key_row(key: dict[str, Any]) -> list[str]:
    return [
        text(key.get("id")),
        text(key.get("name")),
        text(key.get("prefix")),
        text(key.get("enabled")),
        text(key.get("validTo")),
        links(key),
    ]


KEY_HEADERS = ("ID", "NAME", "PREFIX", "ENABLED", "VALID TO", "LINKS")


def create_links(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    """The new key's links and, for each, the option that gave it. A key without links may call every
    endpoint, so asking for one takes --primary, as the web form's "primary key" box: checked before the store
    is opened."""
    platform: list[dict[str, Any]] = []
    given: list[str] = []
    if args.application is not None or args.entity is not None or args.action is not None:
        entry: dict[str, Any] = {"applicationId": args.application, "entityId": args.entity}
        if args.action is not None:
            entry["action"] = args.action
        platform.append(entry)
        given.append(" ".join(
            f"{flag} {value}"
            for flag, value in (
                ("--application", args.application), ("--entity", args.entity), ("--action", args.action)
            )
            if value is not None
        ))
    for entry in args.link or []:
        platform.append(entry)
        given.append(f"--link {spell_link(entry)}")
    if not platform and not args.primary:
        raise UsageError(
            "name an application or an entity (--application, --entity or --link), "
            "or give --primary for a key that may call every endpoint"
        )
    if platform and args.primary:
        raise UsageError(
            "a primary key has no links: drop --primary, or drop --application, --entity, --action and --link"
        )
    return platform, given


async def key_create(api: Api, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"name": args.name}
    if args.allowed_ip is not None:
        body["allowedIPs"] = args.allowed_ip
    if args.valid_from is not None:
        body["validFrom"] = args.valid_from
    if args.valid_to is not None:
        body["validTo"] = args.valid_to
    platform, given = create_links(args)
    if platform:
        body["platform"] = platform
    key = await worded(api("POST", KEYS, body=body), {}, {**KEY_FLAGS, **link_flags(given)})
    human = (
        f"created key {key.get('id')}\n{record(key)}\n\n"
        f"secret: {key.get(SECRET_FIELD)}\n"
        "This secret will not be shown again: store it now."
    )
    emit(args, key, human)


async def key_list(api: Api, args: argparse.Namespace) -> None:
    query = {"name": args.name, "enabled": args.enabled, "page": args.page, "size": args.size}
    page = await api("GET", KEYS, query)
    rows = [key_row(key) for key in page["apiKeys"]]
    emit(args, page, f"{table(KEY_HEADERS, rows)}\n{paging_line(page['paging'], len(rows))}")


async def all_keys(api: Api) -> list[dict[str, Any]]:
    keys: list[dict[str, Any]] = []
    page = 0
    while True:
        answer = await api("GET", KEYS, {"page": str(page), "size": "100"})
        keys += answer["apiKeys"]
        paging = answer.get("paging") or {}
        if not answer["apiKeys"] or page + 1 >= int(paging.get("totalPages") or 0):
            return keys
        page += 1


async def resolve_key(api: Api, ident: str) -> str:
    """The id of the key `ident` names: its id, else its name if no other key has it, else the leading
    characters (8 or more) of one key's id. A name or prefix two keys share is an error naming them."""
    try:
        await api("GET", f"{KEYS}/{ident}")
        return ident
    except Refused as refusal:
        if refusal.answer.status != 404:
            raise
    keys = await all_keys(api)
    by_name = [key for key in keys if key.get("name") == ident]
    found = by_name or [
        key for key in keys if len(ident) >= KEY_PREFIX_MIN and str(key.get("id", "")).upper().startswith(ident.upper())
    ]
    if len(found) == 1:
        return str(found[0]["id"])
    if not found:
        raise Failed(
            f"There is no key {ident!r} (give a key's id, its name, or {KEY_PREFIX_MIN}+ leading characters of its id)."
        )
    what = "name" if by_name else "id prefix"
    candidates = ", ".join(f"{key.get('id')} ({key.get('name')})" for key in found)
    raise Failed(f"the {what} {ident!r} matches {len(found)} keys: {candidates}; give the key's id", 2)


async def key_show(api: Api, args: argparse.Namespace) -> None:
    key = await api("GET", f"{KEYS}/{await resolve_key(api, args.id)}")
    emit(args, key, record(key))


async def key_put(
    api: Api, args: argparse.Namespace, body: dict[str, Any], done: str, flags: dict[str, str] | None = None
) -> None:
    ident = await resolve_key(api, args.id)
    key = await worded(api("PUT", f"{KEYS}/{ident}", body=body), {}, {**KEY_FLAGS, **(flags or {})})
    emit(args, key, f"{done} key {ident}\n{record(key)}")


def relink_flags(args: argparse.Namespace) -> dict[str, str]:
    return link_flags([f"--link {spell_link(entry)}" for entry in args.link or []])


def update_body(args: argparse.Namespace) -> dict[str, Any]:
    """The PUT body of `keys update`; checked before the store is opened, so an empty update costs nothing."""
    body: dict[str, Any] = {}
    if args.name is not None:
        body["name"] = args.name
    if args.allowed_ip is not None:
        body["allowedIPs"] = args.allowed_ip
    if args.valid_from is not None:
        body["validFrom"] = args.valid_from
    if args.valid_to is not None:
        body["validTo"] = args.valid_to
    if args.primary:
        body["platform"] = []
    elif args.link is not None:
        body["platform"] = args.link
    if not body:
        raise UsageError("nothing to change: give --name, --valid-from, --valid-to, --allowed-ip, --link or --primary")
    return body


async def key_update(api: Api, args: argparse.Namespace) -> None:
    await key_put(api, args, update_body(args), "updated", relink_flags(args))


async def key_revoke(api: Api, args: argparse.Namespace) -> None:
    await key_put(api, args, {"enabled": False}, "revoked")


async def key_enable(api: Api, args: argparse.Namespace) -> None:
    """A key a cascade left without links must also say what it becomes: --link ... or --primary."""
    body: dict[str, Any] = {"enabled": True}
    if args.primary:
        body["platform"] = []
    elif args.link is not None:
        body["platform"] = args.link
    try:
        await key_put(api, args, body, "enabled", relink_flags(args))
    except Refused as refusal:
        if "platform" in body or "platform" not in refused_fields(refusal.answer):
            raise
        raise Refused(
            refusal.answer, "give --primary for a primary key, or --link for a linked one", refusal.message
        ) from None


async def key_delete(api: Api, args: argparse.Namespace) -> None:
    ident = await resolve_key(api, args.id)
    answer = await api("DELETE", f"{KEYS}/{ident}")
    emit(args, answer, f"deleted key {ident}")


# the command line -----------------------------------------------------------------------------------


STORE_HELP = f"store URL (default: $KEYSCOPE_STORE, else {DEFAULT_STORE}; sqlite:////abs/path.db if absolute)"
JSON_HELP = "print exactly the JSON the HTTP API answers"
CREATE_HELP = "create the store if it does not exist (otherwise a missing SQLite file is an error; see `keyscope init`)"
URL_HELP = (
    "manage the gateway at this address (http://HOST:PORT) over its management API instead of a store; "
    "not with --store (apps, entities, associations and keys only: init, explain and serve run locally)"
)
TOKEN_HELP = "the gateway's admin token, with --url ('-' reads it from stdin)"
KEY_ID_HELP = f"the key's id, its name, or {KEY_PREFIX_MIN}+ leading characters of its id (a shared name is an error)"


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    # Leaf parsers repeat --store/--json with SUPPRESS defaults, so the options work before or after the
    # command without a leaf's default overwriting a value given earlier. The global --store has its own
    # dest because `serve` defines a --store whose default would overwrite it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", metavar="URL", default=argparse.SUPPRESS, help=STORE_HELP)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=JSON_HELP)
    common.add_argument("--create", action="store_true", default=argparse.SUPPRESS, help=CREATE_HELP)
    common.add_argument("--url", metavar="URL", default=argparse.SUPPRESS, help=URL_HELP)
    common.add_argument("--token", metavar="TOKEN", default=argparse.SUPPRESS, help=TOKEN_HELP)
    parser = argparse.ArgumentParser(
        prog="keyscope",
        description="Manage keyscope's applications, entities, resource associations and API keys: in-process "
        "against the store (--store), or over HTTP through a running gateway's management API (--url and "
        "--token), with the same output and exit status. init, explain and serve always run locally.",
    )
    parser.add_argument("--version", action="version", version=f"keyscope {__version__}")
    parser.add_argument("--store", metavar="URL", dest="global_store", default=None, help=STORE_HELP)
    parser.add_argument("--json", action="store_true", help=JSON_HELP)
    parser.add_argument("--create", action="store_true", help=CREATE_HELP)
    parser.add_argument("--url", metavar="URL", dest="global_url", default=None, help=URL_HELP)
    parser.add_argument("--token", metavar="TOKEN", dest="global_token", default=None, help=TOKEN_HELP)
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)

    def leaf(commands: argparse._SubParsersAction, name: str, command: Command, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(command=command, parser=sub)
        return sub

    def paging(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--page", metavar="N", help="page number, from 0")
        sub.add_argument("--size", metavar="N", help="results per page")

    sub = groups.add_parser(
        "init",
        help="create the store (a SQLite file, or keyscope's tables in a PostgreSQL database); always local",
        description="Create the store: the SQLite file named by --store (or $KEYSCOPE_STORE, else "
        f"{DEFAULT_STORE}) with keyscope's tables, or the tables in an existing PostgreSQL database. "
        "Every other command refuses a SQLite file that does not exist, so a typo never starts an empty store. "
        "Running it on an existing store changes nothing.",
    )
    sub.add_argument("--store", metavar="URL", default=argparse.SUPPRESS, help=STORE_HELP)
    sub.set_defaults(run=run_init, parser=sub)

    for group, kind in (("apps", APPS), ("entities", ENTITIES)):
        plural = "applications" if kind is APPS else "entities"
        commands = groups.add_parser(group, help=f"manage {plural}").add_subparsers(
            dest="action", metavar="ACTION", required=True
        )
        handlers = kind_commands(kind)
        sub = leaf(commands, "create", handlers["create"], f"create an {kind.noun}")
        sub.add_argument("id", metavar="ID")
        sub.add_argument("--name", help=f"the {kind.noun}'s name")
        paging(leaf(commands, "list", handlers["list"], f"list {plural}"))
        leaf(commands, "show", handlers["show"], f"show an {kind.noun}").add_argument("id", metavar="ID")
        sub = leaf(commands, "rename", handlers["rename"], f"rename an {kind.noun} (ids never change)")
        sub.add_argument("id", metavar="ID")
        sub.add_argument("name", metavar="NAME")
        leaf(
            commands,
            "delete",
            handlers["delete"],
            f"delete an {kind.noun} with its associations and key links",
        ).add_argument("id", metavar="ID")

    commands = groups.add_parser("associations", help="manage resource associations").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    for name, command, help, required in (
        ("create", association_create, "associate a resource with an application (and entity)", True),
        ("list", association_list, "list associations, optionally filtered", False),
        ("show", association_show, "show one association", True),
        ("delete", association_delete, "delete an association", True),
    ):
        sub = leaf(commands, name, command, help)
        sub.add_argument("--resource-type", metavar="T", required=required, help="NUMBER, DOMAIN, ALPHA, ...")
        sub.add_argument("--channel", metavar="C", required=required, help="SMS, MMS, EMAIL, ...")
        sub.add_argument("--application", metavar="A", required=required, help="applicationId")
        sub.add_argument("--entity", metavar="E", help="entityId")
        sub.add_argument("--resource-id", metavar="R", required=required, help="numberKey, domain name, ...")
        if name == "list":
            paging(sub)

    commands = groups.add_parser("keys", help="manage API keys").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    link_help = "a link APP[:ENTITY][:ACTION] (repeatable; an empty part is null, e.g. :ENTITY or APP::FILL)"

    def validity(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--valid-from", metavar="T", help="ISO 8601 date-time (UTC unless it has an offset)")
        sub.add_argument("--valid-to", metavar="T", help="ISO 8601 date-time (default on create: one year on)")
        sub.add_argument(
            "--allowed-ip",
            metavar="CIDR",
            nargs="*",
            action="extend",
            help="addresses or CIDR ranges the key may be used from (repeatable; none given: any address)",
        )

    def relinking(sub: argparse.ArgumentParser) -> None:
        relink = sub.add_mutually_exclusive_group()
        relink.add_argument(
            "--link", metavar="LINK", type=parse_link, action="append", help=f"{link_help}; replaces all"
        )
        relink.add_argument(
            "--primary", action="store_true", help="remove every link: the key may call every endpoint"
        )

    sub = leaf(
        commands, "create", key_create, "create a key and print its secret, once: give its links, or --primary"
    )
    sub.add_argument("--name", required=True)
    sub.add_argument("--application", metavar="A", help="link the key to this application")
    sub.add_argument("--entity", metavar="E", help="link the key to this entity")
    sub.add_argument(
        "--action",
        metavar="FILL|FORCE",
        type=action_choice,
        help="what the gateway does with requests lacking the ids (upper case, as the API spells it)",
    )
    sub.add_argument("--link", metavar="LINK", type=parse_link, action="append", help=link_help)
    sub.add_argument(
        "--primary",
        action="store_true",
        help="a primary key, with no links: it may call every endpoint (required when no link is given)",
    )
    validity(sub)
    sub.set_defaults(check=create_links)
    sub = leaf(commands, "list", key_list, "list keys (never their secrets)")
    sub.add_argument("--name", help="only keys with this name")
    sub.add_argument("--enabled", metavar="true|false", help="only enabled or only disabled keys")
    paging(sub)
    sub = leaf(commands, "show", key_show, "show a key (never its secret)")
    sub.add_argument("id", metavar="KEY", help=KEY_ID_HELP)
    sub = leaf(commands, "update", key_update, "change a key's name, validity, addresses or links")
    sub.add_argument("id", metavar="KEY", help=KEY_ID_HELP)
    sub.add_argument("--name")
    validity(sub)
    relinking(sub)
    sub.set_defaults(check=update_body)
    leaf(commands, "revoke", key_revoke, "disable a key").add_argument("id", metavar="KEY", help=KEY_ID_HELP)
    sub = leaf(commands, "enable", key_enable, "enable a revoked key again")
    sub.add_argument("id", metavar="KEY", help=KEY_ID_HELP)
    relinking(sub)
    leaf(commands, "delete", key_delete, "delete a key").add_argument("id", metavar="KEY", help=KEY_ID_HELP)

    sub = groups.add_parser(
        "explain",
        help="show, step by step, what the gateway would decide about a request (nothing is forwarded); "
        "always local, against the store",
        description="Show, step by step, what the gateway would decide about a request; nothing is forwarded. "
        "Exit status: 0 allowed, 1 refused, 2 usage or store problem.",
    )
    sub.add_argument("--store", metavar="URL", default=argparse.SUPPRESS, help=STORE_HELP)
    sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the trace as JSON")
    who = sub.add_mutually_exclusive_group(required=True)
    who.add_argument("--key", metavar="SECRET", help="the API key secret the request carries ('-' reads it from stdin)")
    who.add_argument("--key-id", metavar="ID", help="a key chosen by id (its secret is not checked)")
    sub.add_argument("method", metavar="METHOD", help="GET, POST, ...")
    sub.add_argument("target", metavar="TARGET", help="the request target as sent: /path?query")
    sub.add_argument("--body", metavar="FILE", help="the request body, read from FILE ('-' for stdin)")
    sub.add_argument("--content-type", metavar="T", help="the request's Content-Type")
    sub.add_argument("--client-ip", metavar="ADDR", help="the caller's address, for keys with allowed IPs")
    sub.add_argument("--endpoints", metavar="FILE", help="the allowlist (default: the packaged endpoints.yaml)")
    sub.set_defaults(run=run_explain, parser=sub)

    add_serve(groups, argv)
    return parser


def run_explain(args: argparse.Namespace) -> int:
    """`keyscope explain`: 0 when the gateway would let the request through, 1 when it would refuse it."""
    from keyscope.allowlist.table import EndpointsError
    from keyscope.allowlist.table import load as load_endpoints
    from keyscope.gateway import explain

    if args.key == "-" and args.body == "-":
        args.parser.print_usage(sys.stderr)
        print("keyscope explain: error: --key - and --body - cannot both read stdin", file=sys.stderr)
        return 2
    try:
        endpoints = load_endpoints(args.endpoints)
        secret = sys.stdin.readline().strip() if args.key == "-" else args.key
        body = b""
        if args.body == "-":
            body = sys.stdin.buffer.read()
        elif args.body is not None:
            with open(args.body, "rb") as file:
                body = file.read()
    except (EndpointsError, OSError) as exc:
        print(f"keyscope: {one_line(str(exc))}", file=sys.stderr)
        return 2

    async def decide() -> explain.Explanation:
        store = await open_store(store_url(args), create=bool(getattr(args, "create", False)))
        try:
            return await explain.explain(
                store,
                endpoints,
                args.method,
                args.target,
                secret=secret,
                key_id=args.key_id,
                body=body,
                content_type=args.content_type,
                client=args.client_ip,
            )
        finally:
            await store.close()

    try:
        result = asyncio.run(decide())
    except (StoreProblem, explain.KeyNotFound) as exc:
        print(f"keyscope: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(result.to_text())
    return 0 if result.allowed else 1


def add_serve(groups: argparse._SubParsersAction, argv: Sequence[str]) -> None:
    """`serve` comes from keyscope.serve.server, imported only when asked for: managing keys needs no web server."""
    if importlib.util.find_spec("keyscope.serve.server") is None:
        return
    if "serve" in argv:
        from keyscope.serve.server import add_parser

        add_parser(groups)
    else:
        groups.add_parser("serve", help="run the gateway (keyscope serve --help for its options)")


def redact(url: str) -> str:
    """The URL without a password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def store_url(args: argparse.Namespace) -> str:
    return getattr(args, "store", None) or args.global_store or os.environ.get("KEYSCOPE_STORE") or DEFAULT_STORE


async def open_store(url: str, create: bool = False) -> Store:
    """The opened store; a SQLite file that does not exist is an error naming it unless `create`."""
    shown = redact(url)
    try:
        store = store_from_url(url, create=create)
    except ValueError as exc:
        raise StoreProblem(one_line(str(exc).replace(url, shown))) from None
    except ImportError as exc:
        raise StoreProblem(f"cannot use store {shown}: {one_line(str(exc))}") from None
    try:
        await store.open()
    except StoreMissing as exc:
        raise StoreAbsent(
            f"store {shown} does not exist (no file {exc.path!r}): create it with `keyscope init --store {shown}`, "
            "or add --create"
        ) from None
    except StoreError as exc:
        raise StoreProblem(one_line(str(exc).replace(url, shown))) from None
    except Exception as exc:  # a driver's own error (e.g. PostgreSQL's): the operator still gets one line
        reason = one_line(str(exc).replace(url, shown)) or type(exc).__name__
        raise StoreProblem(f"cannot open store {shown}: {reason}") from None
    return store


def one_line(message: str) -> str:
    return " ".join(message.split())


def run_init(args: argparse.Namespace) -> int:
    """`keyscope init`: create the store, or find it already there (0 either way)."""
    url = store_url(args)
    shown = redact(url)

    async def init() -> bool:
        try:
            await (await open_store(url)).close()
            return False
        except StoreAbsent:
            await (await open_store(url, create=True)).close()
            return True

    try:
        created = asyncio.run(init())
    except StoreProblem as exc:
        print(f"keyscope: {exc}", file=sys.stderr)
        return 2
    print(f"created store {shown}" if created else f"store {shown} already exists; nothing to do")
    return 0


async def run(args: argparse.Namespace) -> None:
    if args.remote is not None:
        from keyscope.cli.remote import remote

        url, token = args.remote
        await args.command(Api(remote(url, token, redact(url))), args)
        return
    store = await open_store(store_url(args), create=bool(getattr(args, "create", False)))
    try:
        token = secrets.token_urlsafe(32)
        app = admin.create_app(store, admin_token=token, authenticator=KeyAuthenticator(store))
        await args.command(Api(in_process(app, token)), args)
    finally:
        await store.close()


def remote_target(args: argparse.Namespace) -> tuple[str, str] | None:
    """(url, token) for `--url URL --token T`, None without --url; a usage error for what cannot go with them.
    `--token -` reads the token from the first line of stdin (so it is not in the process list)."""
    url = getattr(args, "url", None) or args.global_url
    token = getattr(args, "token", None) or args.global_token
    if url is None and getattr(args, "command", None) is not None and args.global_store is None \
            and getattr(args, "store", None) is None:
        # KEYSCOPE_URL / KEYSCOPE_TOKEN, as --url / --token, for the management commands when no --store is given
        url = os.environ.get("KEYSCOPE_URL") or None
        token = token or (os.environ.get("KEYSCOPE_TOKEN") or None if url is not None else None)
    if url is None:
        if token is not None:
            raise UsageError("--token is for a remote gateway: give its --url too")
        return None
    if getattr(args, "command", None) is None:
        raise UsageError(
            f"{args.group} always runs locally, against the store: "
            "--url applies to apps, entities, associations and keys"
        )
    if getattr(args, "store", None) is not None or args.global_store is not None:
        raise UsageError("--url and --store cannot be used together: the gateway at --url uses its own store")
    if getattr(args, "create", False):
        raise UsageError("--create does not apply with --url: the gateway's store exists already")
    from keyscope.cli.remote import check_url

    problem = check_url(url)
    if problem is not None:
        raise UsageError(problem)
    if token is None:
        raise UsageError("--url needs --token: the gateway's admin token (--token - reads it from stdin)")
    if token == "-":
        token = sys.stdin.readline().strip()
    if not token:
        raise UsageError("--token is empty")
    return url, token


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
        try:
            args.remote = remote_target(args)
            if getattr(args, "check", None) is not None:
                args.check(args)
        except UsageError as exc:
            getattr(args, "parser", parser).error(str(exc))
    except SystemExit as exc:  # argparse's usage errors (2) and --help (0)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    if getattr(args, "command", None) is None:  # `serve` (from another module), `explain` and `init`
        if args.group == "serve" and getattr(args, "create", False):
            # serve never creates its store: a typo in a deployment must not start an empty gateway
            parser.print_usage(sys.stderr)
            print("keyscope: error: --create does not apply to serve: create the store with "
                  "`keyscope init --store URL` first", file=sys.stderr)
            return 2
        if getattr(args, "store", None) is None:
            args.store = args.global_store
        return int(args.run(args))
    from keyscope.cli.remote import RemoteProblem

    try:
        asyncio.run(run(args))
    except RemoteProblem as exc:
        print(f"keyscope: {exc}", file=sys.stderr)
        return exc.status
    except StoreProblem as exc:
        print(f"keyscope: {exc}", file=sys.stderr)
        return 2
    except Failed as exc:
        print(f"keyscope: {exc}", file=sys.stderr)
        return exc.status
    except Refused as exc:
        print("\n".join(error_lines(exc.answer, exc.message, exc.flags)), file=sys.stderr)
        if exc.hint:
            print(f"keyscope: hint: {exc.hint}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `keyscope keys list | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
