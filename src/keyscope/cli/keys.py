"""`keyscope keys`: create (printing the secret once), list, show, update, revoke, enable and delete API keys.

A key is named by its id, its name, or 8+ leading characters of its id; its links are spelled
APP[:ENTITY][:ACTION] (`--link`), as `keys list` shows them; its rate limits REQUESTS/PERIOD (`--rate-limit
100/s`, repeatable), and `--no-enforce` makes it a shadow key.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from keyscope.cli.api import Api, Refused, worded
from keyscope.cli.errors import Failed, UsageError, refused_fields
from keyscope.cli.output import SECRET_FIELD, emit, links, paging_line, record, spell_link, table, text
from keyscope.core import ratelimits

KEYS = "/settings/2/api-keys"
ACTIONS = ("FILL", "FORCE")
KEY_PREFIX_MIN = 8
"""A key may be named by this many leading characters of its id, or more."""
KEY_FLAGS = {"name": "--name", "allowedIPs": "--allowed-ip", "validFrom": "--valid-from", "validTo": "--valid-to",
             "rateLimits": "--rate-limit", "enforce": "--no-enforce"}
KEY_HEADERS = ("ID", "NAME", "PREFIX", "ENABLED", "VALID TO", "LINKS")


# the command line's spellings ----------------------------------------------------------------------


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


def rate_limit(value: str) -> dict[str, Any]:
    """`--rate-limit 100/s` (`/second`, `/min`, `/hour`, `/d`, ...) as the API's `{"requests", "per"}`."""
    try:
        return ratelimits.parse(value).to_doc()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def action_choice(value: str) -> str:
    """`--action`: FILL or FORCE, spelled as the API and `keys list` spell them (so `fill` is refused here,
    with the right spelling, rather than by the server)."""
    if value not in ACTIONS:
        hint = f"; did you mean {value.upper()}?" if value.upper() in ACTIONS else ""
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose FILL or FORCE, upper case{hint})")
    return value


def link_flags(platform_flags: Sequence[str]) -> dict[str, str]:
    """`platform[i]` -> the option that made the i-th entry; `platform` itself -> all of them."""
    flags = {f"platform[{index}]": flag for index, flag in enumerate(platform_flags)}
    if platform_flags:
        flags["platform"] = " / ".join(dict.fromkeys(platform_flags))
    return flags


def relink_flags(args: argparse.Namespace) -> dict[str, str]:
    return link_flags([f"--link {spell_link(entry)}" for entry in args.link or []])


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
    if args.no_rate_limits:
        body["rateLimits"] = []
    elif args.rate_limit:
        body["rateLimits"] = args.rate_limit
    if args.enforce is not None:
        body["enforce"] = args.enforce
    if not body:
        raise UsageError("nothing to change: give --name, --valid-from, --valid-to, --allowed-ip, --link, --primary, "
                         "--rate-limit, --no-rate-limits, --enforce or --no-enforce")
    return body


# naming a key --------------------------------------------------------------------------------------


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
        if refusal.status != 404:
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


# the commands --------------------------------------------------------------------------------------


def key_row(key: dict[str, Any]) -> list[str]:
    return [
        text(key.get("id")),
        text(key.get("name")),
        text(key.get("prefix")),
        text(key.get("enabled")),
        text(key.get("validTo")),
        links(key),
    ]


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
    if args.rate_limit:
        body["rateLimits"] = args.rate_limit
    if args.no_enforce:
        body["enforce"] = False
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


async def key_show(api: Api, args: argparse.Namespace) -> None:
    key = await api("GET", f"{KEYS}/{await resolve_key(api, args.id)}")
    emit(args, key, record(key))


async def key_put(
    api: Api, args: argparse.Namespace, body: dict[str, Any], done: str, flags: dict[str, str] | None = None
) -> None:
    ident = await resolve_key(api, args.id)
    key = await worded(api("PUT", f"{KEYS}/{ident}", body=body), {}, {**KEY_FLAGS, **(flags or {})})
    emit(args, key, f"{done} key {ident}\n{record(key)}")


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
        if "platform" in body or "platform" not in refused_fields(refusal.error):
            raise
        raise Refused(
            refusal.error, "give --primary for a primary key, or --link for a linked one", refusal.message
        ) from None


async def key_delete(api: Api, args: argparse.Namespace) -> None:
    ident = await resolve_key(api, args.id)
    answer = await api("DELETE", f"{KEYS}/{ident}")
    emit(args, answer, f"deleted key {ident}")
