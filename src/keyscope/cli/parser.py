"""The `keyscope` command line: argparse's parsers for every command, each leaf naming the function that runs it.

`serve` is keyscope.serve.server's own parser, imported only when the command line asks for serve: managing keys
needs no web server.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Sequence

from keyscope import __version__
from keyscope.cli.api import Command
from keyscope.cli.associations import association_create, association_delete, association_list, association_show
from keyscope.cli.explain import run_explain
from keyscope.cli.keys import (
    KEY_PREFIX_MIN,
    action_choice,
    create_links,
    key_create,
    key_delete,
    key_enable,
    key_list,
    key_revoke,
    key_show,
    key_update,
    parse_link,
    rate_limit,
    update_body,
)
from keyscope.cli.records import APPS, ENTITIES, kind_commands
from keyscope.cli.state import state_apply, state_diff, state_export
from keyscope.cli.store import DEFAULT_STORE, run_init

STORE_HELP = f"store URL (default: $KEYSCOPE_STORE, else {DEFAULT_STORE}; sqlite:////abs/path.db if absolute)"
JSON_HELP = "print exactly the JSON the HTTP API answers"
CREATE_HELP = "create the store if it does not exist (otherwise a missing SQLite file is an error; see `keyscope init`)"
URL_HELP = (
    "manage the gateway at this address (http://HOST:PORT) over its management API instead of a store; "
    "not with --store (apps, entities, associations, keys, export, diff and apply: init, explain and serve run "
    "locally)"
)
TOKEN_HELP = "the gateway's admin token, with --url ('-' reads it from stdin)"
RATE_HELP = "a rate limit REQUESTS/PERIOD, the period s, m, h or d (or second, minute, hour, day): 100/s (repeatable)"
NO_ENFORCE_HELP = ("shadow key: what the allowlist, scope, existence or a rate limit would refuse is forwarded "
                   "and logged as shadow")
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
        if kind is APPS:
            sub.add_argument("--rate-limit", metavar="N/PERIOD", type=rate_limit, action="append", help=RATE_HELP)
            sub = leaf(commands, "limit", handlers["limit"], "set the rate limits every key linked to the "
                       "application spends from together (none given: remove them)")
            sub.add_argument("id", metavar="ID")
            sub.add_argument("--rate-limit", metavar="N/PERIOD", type=rate_limit, action="append", help=RATE_HELP)
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
    sub.add_argument("--rate-limit", metavar="N/PERIOD", type=rate_limit, action="append", help=RATE_HELP)
    sub.add_argument("--no-enforce", action="store_true", help=NO_ENFORCE_HELP)
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
    limits = sub.add_mutually_exclusive_group()
    limits.add_argument("--rate-limit", metavar="N/PERIOD", type=rate_limit, action="append",
                        help=RATE_HELP + "; replaces all")
    limits.add_argument("--no-rate-limits", action="store_true", help="remove the key's rate limits")
    sub.add_argument("--enforce", action=argparse.BooleanOptionalAction, default=None,
                     help="--no-enforce: " + NO_ENFORCE_HELP + "; --enforce: refuse them again")
    sub.set_defaults(check=update_body)
    leaf(commands, "revoke", key_revoke, "disable a key").add_argument("id", metavar="KEY", help=KEY_ID_HELP)
    sub = leaf(commands, "enable", key_enable, "enable a revoked key again")
    sub.add_argument("id", metavar="KEY", help=KEY_ID_HELP)
    relinking(sub)
    leaf(commands, "delete", key_delete, "delete a key").add_argument("id", metavar="KEY", help=KEY_ID_HELP)

    sub = leaf(groups, "export", state_export, "write the store's applications, entities, associations and keys "
               "as a YAML state file (never secrets; stdout unless --output)")
    sub.add_argument("--output", "-o", metavar="FILE", help="write the state file here (default: stdout)")
    prune_help = "also delete what the store holds and the file does not name (`default` always stays)"
    sub = leaf(groups, "diff", state_diff, "show what `apply` would create, change and delete; exit status 0: the "
               "store matches the file, 1: there are changes, 2: an error")
    sub.add_argument("file", metavar="FILE", help="the state file ('-' reads it from stdin)")
    sub.add_argument("--prune", action="store_true", help=prune_help)
    sub = leaf(groups, "apply", state_apply, "make the store match a state file, in one transaction; prints the "
               "secrets of the keys it creates, once")
    sub.add_argument("file", metavar="FILE", help="the state file ('-' reads it from stdin)")
    sub.add_argument("--prune", action="store_true", help=prune_help)
    sub.add_argument("--dry-run", action="store_true", help="write nothing: the same as diff (and its exit status)")

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
    add_authorize(groups, argv)
    return parser


def add_serve(groups: argparse._SubParsersAction, argv: Sequence[str]) -> None:
    """`serve` comes from keyscope.serve.server, imported only when asked for: managing keys needs no web server."""
    if importlib.util.find_spec("keyscope.serve.server") is None:
        return
    if "serve" in argv:
        from keyscope.serve.server import add_parser

        add_parser(groups)
    else:
        groups.add_parser("serve", help="run the gateway (keyscope serve --help for its options)")


def add_authorize(groups: argparse._SubParsersAction, argv: Sequence[str]) -> None:
    """`authorize`: serve's options, answering Envoy's or nginx's authorization checks (keyscope.serve.server)."""
    if importlib.util.find_spec("keyscope.serve.server") is None:
        return
    if "authorize" in argv:
        from keyscope.serve.server import add_authorize_parser

        add_authorize_parser(groups)
    else:
        groups.add_parser("authorize", help="answer Envoy ext_authz or nginx auth_request checks "
                          "(keyscope authorize --help for its options)")
