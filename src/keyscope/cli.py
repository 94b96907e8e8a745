"""The `keyscope` console script: the management API, driven in-process.

Each command is a request to the admin ASGI app, called directly (no server, no network) with a one-time admin
token. The API is the one implementation of every rule and of the JSON shapes, so `--json` prints exactly what
the HTTP API answers for the same operation; this module only turns arguments into requests and answers into
text for people.
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

from . import admin
from .auth import KeyAuthenticator
from .store import Store, StoreError, store_from_url
from .types import ASGIApp

DEFAULT_STORE = "sqlite:///keyscope.db"
SECRET_FIELD = "apiKeySecret"


# the management API, in-process ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any  # the parsed JSON, the text of a non-JSON body, or None when empty


class Refused(Exception):
    """The API answered with an error: the CLI prints its text and exits 1."""

    def __init__(self, answer: Answer, hint: str | None = None) -> None:
        super().__init__(answer.status)
        self.answer = answer
        self.hint = hint


class UsageError(Exception):
    """A command line that argparse accepts but that asks for nothing: exit 2, like argparse's own errors."""


class StoreProblem(Exception):
    """The store URL is unusable or the store cannot be opened: one line, exit 2."""


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Api:
    """The admin app, called in-process as admin with a token made for this one run."""

    app: ASGIApp
    token: str

    async def __call__(
        self, method: str, path: str, query: dict[str, str | None] | None = None, body: object = None
    ) -> Any:
        """The answer's body; any status outside 2xx raises Refused."""
        given = {name: value for name, value in (query or {}).items() if value is not None}
        status, _, raw = await admin.call(self.app, method, path, body, given, self.token)
        answer = Answer(status, _decode(raw))
        if not 200 <= status < 300:
            raise Refused(answer)
        return answer.body


def refused_fields(answer: Answer) -> set[str]:
    body = answer.body if isinstance(answer.body, dict) else {}
    exception = (body.get("requestError") or {}).get("serviceException") or {}
    return {*(exception.get("validationErrors") or {}), *(v.get("property") for v in body.get("violations") or [])}


def error_lines(answer: Answer) -> list[str]:
    """The API's own error text, in either family: a headline, then one `field: message` line per field."""
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


def kind_commands(kind: Kind) -> dict[str, Command]:
    def item_path(ident: str) -> str:
        return f"{kind.path}/{ident}"

    async def create(api: Api, args: argparse.Namespace) -> None:
        body = {kind.id_field: args.id}
        if args.name is not None:
            body[kind.name_field] = args.name
        await api("POST", kind.path, body=body)
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
    answer = await api("POST", ASSOCIATIONS, body=body)
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
    entry: dict[str, str | None] = {"applicationId": application, "entityId": entity}
    if action is not None:
        entry["action"] = action
    return entry


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


async def key_create(api: Api, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"name": args.name}
    if args.allowed_ip is not None:
        body["allowedIPs"] = args.allowed_ip
    if args.valid_from is not None:
        body["validFrom"] = args.valid_from
    if args.valid_to is not None:
        body["validTo"] = args.valid_to
    platform = []
    if args.application is not None or args.entity is not None or args.action is not None:
        entry: dict[str, Any] = {"applicationId": args.application, "entityId": args.entity}
        if args.action is not None:
            entry["action"] = args.action
        platform.append(entry)
    platform += args.link or []
    if platform:
        body["platform"] = platform
    key = await api("POST", KEYS, body=body)
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


async def key_show(api: Api, args: argparse.Namespace) -> None:
    key = await api("GET", f"{KEYS}/{args.id}")
    emit(args, key, record(key))


async def key_put(api: Api, args: argparse.Namespace, body: dict[str, Any], done: str) -> None:
    key = await api("PUT", f"{KEYS}/{args.id}", body=body)
    emit(args, key, f"{done} key {args.id}\n{record(key)}")


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
    await key_put(api, args, update_body(args), "updated")


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
        await key_put(api, args, body, "enabled")
    except Refused as refusal:
        if "platform" in body or "platform" not in refused_fields(refusal.answer):
            raise
        raise Refused(refusal.answer, "give --primary for a primary key, or --link for a linked one") from None


async def key_delete(api: Api, args: argparse.Namespace) -> None:
    answer = await api("DELETE", f"{KEYS}/{args.id}")
    emit(args, answer, f"deleted key {args.id}")


# the command line -----------------------------------------------------------------------------------


STORE_HELP = f"store URL (default: $KEYSCOPE_STORE, else {DEFAULT_STORE}; sqlite:////abs/path.db if absolute)"
JSON_HELP = "print exactly the JSON the HTTP API answers"


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    # Leaf parsers repeat --store/--json with SUPPRESS defaults, so the options work before or after the
    # command without a leaf's default overwriting a value given earlier. The global --store has its own
    # dest because `serve` defines a --store whose default would overwrite it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", metavar="URL", default=argparse.SUPPRESS, help=STORE_HELP)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=JSON_HELP)
    parser = argparse.ArgumentParser(
        prog="keyscope",
        description="Manage keyscope's applications, entities, resource associations and API keys.",
    )
    parser.add_argument("--store", metavar="URL", dest="global_store", default=None, help=STORE_HELP)
    parser.add_argument("--json", action="store_true", help=JSON_HELP)
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)

    def leaf(commands: argparse._SubParsersAction, name: str, command: Command, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(command=command, parser=sub)
        return sub

    def paging(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--page", metavar="N", help="page number, from 0")
        sub.add_argument("--size", metavar="N", help="results per page")

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

    sub = leaf(commands, "create", key_create, "create a key and print its secret, once")
    sub.add_argument("--name", required=True)
    sub.add_argument("--application", metavar="A", help="link the key to this application")
    sub.add_argument("--entity", metavar="E", help="link the key to this entity")
    sub.add_argument("--action", metavar="FILL|FORCE", help="what the gateway does with requests lacking the ids")
    sub.add_argument("--link", metavar="LINK", type=parse_link, action="append", help=link_help)
    validity(sub)
    sub = leaf(commands, "list", key_list, "list keys (never their secrets)")
    sub.add_argument("--name", help="only keys with this name")
    sub.add_argument("--enabled", metavar="true|false", help="only enabled or only disabled keys")
    paging(sub)
    leaf(commands, "show", key_show, "show a key (never its secret)").add_argument("id", metavar="ID")
    sub = leaf(commands, "update", key_update, "change a key's name, validity, addresses or links")
    sub.add_argument("id", metavar="ID")
    sub.add_argument("--name")
    validity(sub)
    relinking(sub)
    sub.set_defaults(check=update_body)
    leaf(commands, "revoke", key_revoke, "disable a key").add_argument("id", metavar="ID")
    sub = leaf(commands, "enable", key_enable, "enable a revoked key again")
    sub.add_argument("id", metavar="ID")
    relinking(sub)
    leaf(commands, "delete", key_delete, "delete a key").add_argument("id", metavar="ID")

    sub = groups.add_parser(
        "explain",
        help="show, step by step, what the gateway would decide about a request (nothing is forwarded)",
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
    from . import explain
    from .endpoints import EndpointsError
    from .endpoints import load as load_endpoints

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
        url = getattr(args, "store", None) or args.global_store or os.environ.get("KEYSCOPE_STORE") or DEFAULT_STORE
        store = await open_store(url)
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
    """`serve` comes from keyscope.server, imported only when asked for: managing keys needs no web server."""
    if importlib.util.find_spec("keyscope.server") is None:
        return
    if "serve" in argv:
        from .server import add_parser

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


async def open_store(url: str) -> Store:
    shown = redact(url)
    try:
        store = store_from_url(url)
    except ValueError as exc:
        raise StoreProblem(one_line(str(exc).replace(url, shown))) from None
    except ImportError as exc:
        raise StoreProblem(f"cannot use store {shown}: {one_line(str(exc))}") from None
    try:
        await store.open()
    except StoreError as exc:
        raise StoreProblem(one_line(str(exc).replace(url, shown))) from None
    except Exception as exc:  # a driver's own error (e.g. PostgreSQL's): the operator still gets one line
        reason = one_line(str(exc).replace(url, shown)) or type(exc).__name__
        raise StoreProblem(f"cannot open store {shown}: {reason}") from None
    return store


def one_line(message: str) -> str:
    return " ".join(message.split())


async def run(args: argparse.Namespace) -> None:
    url = getattr(args, "store", None) or args.global_store or os.environ.get("KEYSCOPE_STORE") or DEFAULT_STORE
    store = await open_store(url)
    try:
        token = secrets.token_urlsafe(32)
        app = admin.create_app(store, admin_token=token, authenticator=KeyAuthenticator(store))
        await args.command(Api(app, token), args)
    finally:
        await store.close()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
        if getattr(args, "check", None) is not None:
            try:
                args.check(args)
            except UsageError as exc:
                args.parser.error(str(exc))
    except SystemExit as exc:  # argparse's usage errors (2) and --help (0)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    if getattr(args, "command", None) is None:  # `serve` (from another module) and `explain`
        if getattr(args, "store", None) is None:
            args.store = args.global_store
        return int(args.run(args))
    try:
        asyncio.run(run(args))
    except StoreProblem as exc:
        print(f"keyscope: {exc}", file=sys.stderr)
        return 2
    except Refused as exc:
        print("\n".join(error_lines(exc.answer)), file=sys.stderr)
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
