"""Canaries: the library internals keyscope relies on, each named, so a release that changes one fails here with
the internal's name instead of silently turning off early answers, head limits or trailer dropping.

pyproject.toml bounds uvicorn below its next minor release; raise the bound only when these pass.
"""

from __future__ import annotations

import asyncio
import inspect
import json

import httptools
import pytest
from uvicorn.config import Config
from uvicorn.protocols.http import flow_control
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from keyscope.gateway.protocol import GatewayProtocol

# What keyscope.gateway.protocol overrides or calls on uvicorn's httptools protocol.
PROTOCOL_METHODS = [
    "connection_made", "connection_lost", "data_received", "on_url", "on_header", "on_headers_complete",
    "on_body", "on_message_complete", "on_response_complete",
    "send_400_response", "shutdown", "timeout_keep_alive_handler", "handle_websocket_upgrade",
    "_start_asgi_task", "_unset_keepalive_if_required", "_should_upgrade", "_unsupported_upgrade_warning",
]
# What it reads or sets on a connection and on a request's cycle.
PROTOCOL_ATTRIBUTES = ["parser", "flow", "headers", "expect_100_continue", "cycle", "url", "scope", "root_path",
                       "loop", "transport", "logger", "app"]
CYCLE_ATTRIBUTES = ["scope", "body", "transport", "keep_alive", "response_started", "response_complete",
                    "message_event"]


@pytest.mark.parametrize("name", PROTOCOL_METHODS)
def test_uvicorn_httptools_protocol_has(name: str) -> None:
    assert callable(getattr(HttpToolsProtocol, name, None)), f"uvicorn HttpToolsProtocol.{name} is gone"


def test_httptools_calls_the_chunk_callbacks_keyscope_defines() -> None:
    """GatewayProtocol tells a chunk's data and the trailers from the head by on_chunk_header/on_chunk_complete,
    which httptools calls only when the protocol defines them."""
    calls: list[str] = []

    class Probe:
        def on_chunk_header(self) -> None:
            calls.append("chunk_header")

        def on_chunk_complete(self) -> None:
            calls.append("chunk_complete")

        def on_header(self, name: bytes, value: bytes) -> None:
            calls.append("header " + name.decode())

    parser = httptools.HttpRequestParser(Probe())
    parser.feed_data(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-T: 1\r\n\r\n")
    assert calls == ["header Host", "header Transfer-Encoding", "chunk_header", "chunk_complete", "chunk_header",
                     "header X-T", "chunk_complete"], f"httptools chunk callbacks changed: {calls}"


def test_uvicorn_flow_control_high_water_limit() -> None:
    assert isinstance(flow_control.HIGH_WATER_LIMIT, int), "uvicorn flow_control.HIGH_WATER_LIMIT is gone"


def test_uvicorn_start_asgi_task_takes_a_cycle_and_an_app() -> None:
    params = list(inspect.signature(HttpToolsProtocol._start_asgi_task).parameters)
    assert params[1:] == ["cycle", "app"], f"uvicorn HttpToolsProtocol._start_asgi_task{params} changed"


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_a_connection_and_its_cycle_have_what_keyscope_reads() -> None:
    """One real request through GatewayProtocol: the attributes it touches exist where it touches them."""
    seen: dict[str, object] = {}

    async def app(scope: dict, receive: object, send: object) -> None:  # pragma: no cover - never awaited here
        raise AssertionError

    def early(scope: dict, body: bytes) -> tuple[bytes, bool]:
        seen["scope"] = scope
        body_out = json.dumps({"ok": True}).encode()
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body_out), body_out), False

    app.early = early  # type: ignore[attr-defined]
    loop = asyncio.new_event_loop()
    try:
        config = Config(app, http="httptools", lifespan="off", proxy_headers=False)
        config.load()
        protocol = GatewayProtocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        transport = _Transport()
        protocol.connection_made(transport)
        for name in PROTOCOL_ATTRIBUTES:
            assert hasattr(protocol, name), f"uvicorn HttpToolsProtocol instances no longer have .{name}"
        protocol.data_received(b"POST /x?a=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
        for name in CYCLE_ATTRIBUTES:
            assert hasattr(protocol.cycle, name), f"uvicorn RequestResponseCycle no longer has .{name}"
        assert isinstance(protocol.cycle, RequestResponseCycle)
        assert seen["scope"]["raw_path"] == b"/x" and seen["scope"]["query_string"] == b"a=1"  # type: ignore[index]
        loop.run_until_complete(asyncio.sleep(0))  # the coalesced answer leaves at the end of the loop's step
        assert bytes(transport.written).startswith(b"HTTP/1.1 200 OK")
        protocol.connection_lost(None)
    finally:
        loop.close()


def test_uvicorn_server_surface_the_status_listener_uses() -> None:
    """keyscope.serve.status starts a second uvicorn server inside the gateway's loop (Server.startup with sockets, a
    lifespan_class on the config) and is called back by the main one (Config's callback_notify and
    timeout_notify); keyscope.serve.server runs the Multiprocess supervisor itself to pass that callback to workers."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    config_params = inspect.signature(uvicorn.Config).parameters
    for name in ("callback_notify", "timeout_notify", "timeout_graceful_shutdown", "factory", "workers"):
        assert name in config_params, f"uvicorn.Config no longer takes {name}="
    assert "sockets" in inspect.signature(uvicorn.Server.startup).parameters, "uvicorn Server.startup(sockets=) gone"
    for name in ("startup", "shutdown", "run", "handle_exit", "started"):
        assert hasattr(uvicorn.Server, name) or name == "started", f"uvicorn.Server.{name} is gone"
    config = uvicorn.Config(lambda *a: None, lifespan="off")
    config.load()
    assert hasattr(config, "lifespan_class"), "uvicorn Config.lifespan_class is gone"
    assert hasattr(uvicorn.Server(config), "started"), "uvicorn Server.started is gone"
    assert callable(getattr(Multiprocess, "run", None)), "uvicorn.supervisors.Multiprocess.run is gone"
    assert isinstance(STARTUP_FAILURE, int), "uvicorn.config.STARTUP_FAILURE is gone"


def test_httptools_response_parser_as_the_upstream_client_reads_it() -> None:
    """keyscope.gateway.exchange reads answers with httptools' public HttpResponseParser and relies on how llhttp
    calls it: one on_header per header however the bytes were split, interim (1xx) answers as messages of their
    own, and should_keep_alive() telling the answer's verdict inside on_message_complete (llhttp forgets the
    answer's flags once the message is done, so after feed_data it says no)."""
    seen: list[object] = []

    class Probe:
        def __init__(self) -> None:
            self.parser = httptools.HttpResponseParser(self)

        def on_header(self, name: bytes, value: bytes) -> None:
            seen.append((name, value))

        def on_headers_complete(self) -> None:
            seen.append(self.parser.get_status_code())

        def on_body(self, body: bytes) -> None:
            seen.append(body)

        def on_message_complete(self) -> None:
            seen.append(("keep-alive", self.parser.should_keep_alive()))

    probe = Probe()
    data = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Long: abc\r\n\r\nok"
    for index in range(len(data)):
        probe.parser.feed_data(data[index:index + 1])
    assert seen == [(b"Link", b"</a>"), 103, ("keep-alive", True), (b"Content-Length", b"2"), (b"X-Long", b"abc"),
                    200, b"o", b"k", ("keep-alive", True)], f"httptools response callbacks changed: {seen}"


def test_prometheus_client_histogram_internals_the_metrics_batch_writes() -> None:
    """keyscope.observe.metrics, under --workers N, keeps counts in plain numbers and writes them once a second
    into a Histogram's `_upper_bounds` (its bucket bounds, +Inf last), `_buckets` (one value per bucket, not
    cumulative, each with `inc`) and `_sum` (`inc`). tests/test_metrics.py checks the result equals observe()."""
    from prometheus_client import CollectorRegistry, Histogram

    histogram = Histogram("canary_seconds", "c", buckets=(0.1, 1.0), registry=CollectorRegistry())
    for name in ("_upper_bounds", "_buckets", "_sum"):
        assert hasattr(histogram, name), f"prometheus_client.Histogram.{name} is gone: keyscope.observe.metrics"
    assert list(histogram._upper_bounds) == [0.1, 1.0, float("inf")], "Histogram._upper_bounds changed shape"
    assert len(histogram._buckets) == 3 and all(hasattr(b, "inc") for b in histogram._buckets), "Histogram._buckets"
    assert hasattr(histogram._sum, "inc"), "Histogram._sum has no inc()"


def test_json_encoder_encode_basestring_ascii_the_access_line_quotes_with() -> None:
    """keyscope.observe.accesslog writes its JSON line by hand and quotes strings with
    json.encoder.encode_basestring_ascii (undocumented; the C function json.dumps uses with ensure_ascii), so that
    each field is exactly what json.dumps would write. A Python without it must fail here, by name."""
    import json

    quote = getattr(json.encoder, "encode_basestring_ascii", None)
    assert callable(quote), "json.encoder.encode_basestring_ascii is gone: keyscope.observe.accesslog"
    for text in ["plain", 'a "quoted" \\ path', "caf\u00e9 \u2028 \x00 \U0001f600"]:
        assert quote(text) == json.dumps(text, ensure_ascii=True), text
