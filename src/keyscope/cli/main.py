"""The `keyscope` console script: the management API, driven in-process or over HTTP.

Each management command is a request to the admin ASGI app, called in-process against the store or, with `--url`
and `--token`, sent to a running gateway (keyscope.cli.remote): the transport is the only difference. The API is
the one implementation of every rule and of the JSON shapes, so `--json` prints exactly what the HTTP API
answers for the same operation; the CLI only turns arguments into requests and answers into text for people.

This module is the entry and the dispatch: the parser (keyscope.cli.parser) names the command, `main` picks the
transport, runs it, and turns what went wrong into one message and an exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from collections.abc import Sequence

from keyscope.cli.api import Api, Refused, in_process
from keyscope.cli.errors import Failed, UsageError, error_lines
from keyscope.cli.parser import build_parser
from keyscope.cli.store import StoreProblem, open_store, redact, store_url
from keyscope.control import admin
from keyscope.decide.auth import KeyAuthenticator


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
            "--url applies to apps, entities, associations, keys, export, diff and apply"
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
        print("\n".join(error_lines(exc)), file=sys.stderr)
        if exc.hint:
            print(f"keyscope: hint: {exc.hint}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `keyscope keys list | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    return int(getattr(args, "exit_status", 0))  # a command may end well with another status (`diff`: 1)


if __name__ == "__main__":
    sys.exit(main())
