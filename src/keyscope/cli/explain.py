"""`keyscope explain`: what the gateway would decide about a request, step by step, against the local store.

The explainer lives with the gateway (keyscope.gateway.explain), which is imported only when this command runs:
managing keys must not load the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from keyscope.cli.store import StoreProblem, one_line, open_store, store_url


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
