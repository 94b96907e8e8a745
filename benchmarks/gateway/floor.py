"""keyscope's server alone answering the refused POST: the same 403 bytes, no checks, no log line (a diagnostic row).

The server is `keyscope serve`'s own: uvicorn with `keyscope.gateway.protocol.GatewayProtocol` (early answers, one
send() per answer), uvloop, the same options and the same GC tuning. Its app answers every request with the
refusal the gateway sends for the benchmark's refused POST, from `early()` as the gateway does, without
authenticating, matching, reading the body or logging. Set next to the refusal row, it splits a refusal's
cost into what any answer costs this server (sockets, HTTP parsing, the event loop) and what keyscope's checks
and access line add.

    .venv/bin/python benchmarks/gateway/floor.py --port 8080
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from fixtures import OTHER_APP  # run as a script: benchmarks/gateway is on sys.path

from keyscope.core.errors import Refusal
from keyscope.decide.answers import refusal_answer, refuse
from keyscope.gateway.protocol import GatewayProtocol
from keyscope.serve.server import _tune_gc

REFUSAL = Refusal(403, reason="id_out_of_scope", step="scope", field="messages[0].applicationId",
                  detail=f"This key may not use applicationId {OTHER_APP!r}.")
FAMILY = "legacy"  # /sms/2/text/advanced's error family, as endpoints.yaml says


class FloorApp:
    def __init__(self) -> None:
        self.answer = refusal_answer(REFUSAL, FAMILY)

    def early(self, scope: dict[str, Any], body: bytes) -> tuple[bytes, bool]:
        return self.answer

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "http":  # a request that did not arrive whole: the same answer, the ASGI way
            await refuse(send, REFUSAL, FAMILY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = FloorApp()
    _tune_gc()
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http=GatewayProtocol, lifespan="on",
                access_log=False, proxy_headers=False, server_header=False, date_header=False,
                log_level="warning")


if __name__ == "__main__":
    main()
