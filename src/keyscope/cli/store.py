"""The store a command names (`--store`, else $KEYSCOPE_STORE, else the default file), opened with one-line
errors that never show a password; and `keyscope init`, which creates it."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from urllib.parse import urlsplit, urlunsplit

from keyscope.store import Store, StoreError, store_from_url
from keyscope.store.sqlite import StoreMissing

DEFAULT_STORE = "sqlite:///keyscope.db"


class StoreProblem(Exception):
    """The store URL is unusable or the store cannot be opened: one line, exit 2."""


class StoreAbsent(StoreProblem):
    """The SQLite file does not exist (and nobody asked to create it)."""


def one_line(message: str) -> str:
    return " ".join(message.split())


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
