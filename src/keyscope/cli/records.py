"""`keyscope apps` and `keyscope entities`: applications and entities are the same resource under two names,
so both groups are one set of commands made for a `Kind`. Applications also have rate limits (`apps create
--rate-limit 100/s`, `apps limit ID --rate-limit ...`), which every key linked to one spends from together."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from keyscope.cli.api import Api, Command, worded
from keyscope.cli.output import emit, paging_line, record, table, text


@dataclass(frozen=True, slots=True)
class Kind:
    """Applications and entities are the same resource under two names."""

    noun: str
    path: str
    id_field: str
    name_field: str


APPS = Kind("application", "/provisioning/1/applications", "applicationId", "applicationName")
ENTITIES = Kind("entity", "/provisioning/1/entities", "entityId", "entityName")


def kind_commands(kind: Kind) -> dict[str, Command]:
    def item_path(ident: str) -> str:
        return f"{kind.path}/{ident}"

    async def create(api: Api, args: argparse.Namespace) -> None:
        body = {kind.id_field: args.id}
        if args.name is not None:
            body[kind.name_field] = args.name
        if getattr(args, "rate_limit", None):
            body["rateLimits"] = args.rate_limit
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

    async def limit(api: Api, args: argparse.Namespace) -> None:
        """Replace the rate limits (none given: remove them); the name is sent back as it is, since a PUT sets it."""
        current = await api("GET", item_path(args.id))
        body = {kind.name_field: current.get(kind.name_field), "rateLimits": args.rate_limit or []}
        await worded(api("PUT", item_path(args.id), body=body), {}, {"rateLimits": "--rate-limit"})
        obj = await api("GET", item_path(args.id))
        emit(args, obj, f"{'limited' if args.rate_limit else 'unlimited'} {kind.noun} {args.id}\n{record(obj)}")

    async def delete(api: Api, args: argparse.Namespace) -> None:
        report = await api("DELETE", item_path(args.id))
        human = f"deleted {kind.noun} {args.id}"
        if isinstance(report, dict) and report:
            human += "; the cascade removed:\n" + record(report)
        emit(args, report, human)

    return {"create": create, "list": list_, "show": show, "rename": rename, "delete": delete, "limit": limit}
