"""`keyscope associations`: resources (a number, a domain, ...) associated with an application and entity."""

from __future__ import annotations

import argparse
from typing import Any

from keyscope.cli.api import Api, worded
from keyscope.cli.output import emit, paging_line, record, table, text

ASSOCIATIONS = "/provisioning/1/associations"
ASSOCIATION_HEADERS = ("RESOURCE TYPE", "CHANNEL", "RESOURCE ID", "APPLICATION", "ENTITY")
ASSOCIATION_FLAGS = {
    "resourceType": "--resource-type",
    "channel": "--channel",
    "applicationId": "--application",
    "entityId": "--entity",
    "resourceId": "--resource-id",
}


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


async def association_create(api: Api, args: argparse.Namespace) -> None:
    body = association_body(args)
    messages = {409: "This resource is already associated.", 404: "The application or entity does not exist."}
    answer = await worded(api("POST", ASSOCIATIONS, body=body), messages, ASSOCIATION_FLAGS)
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
