"""Real servers for the gateway tests: the echo backend and `keyscope serve`, as subprocesses on 127.0.0.1.

Requests that an HTTP client would normalise are written as raw bytes on a socket (`raw()`); the rest go
through httpx. Keys are made through the gateway's own management API with the admin token, as an operator
would.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from keyscope.allowlist.table import Endpoint, IdLocation

ADMIN_TOKEN = "test-admin-token-0123456789"
PYTHON = sys.executable


def init_store(store_url: str) -> None:
    """`keyscope init`: `serve` refuses a SQLite file that does not exist, so tests create theirs first."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
    subprocess.run([PYTHON, "-m", "keyscope.cli", "init", "--store", store_url], env=environment, check=True,
                   capture_output=True, timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Echo:
    port: int
    process: subprocess.Popen[bytes]
    client: httpx.Client = field(repr=False)

    @classmethod
    def start(cls) -> Echo:
        port = free_port()
        process = subprocess.Popen([PYTHON, "-m", "keyscope.echo", "--port", str(port)])
        wait_listening(port, process, "echo backend")
        return cls(port, process, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> list[dict[str, Any]]:
        return self.client.get("/__echo/log").json()

    def clear(self) -> None:
        self.client.delete("/__echo/log")

    def stop(self) -> None:
        self.client.close()
        stop(self.process)


@dataclass
class Gateway:
    port: int
    process: subprocess.Popen[bytes]
    store_url: str
    access_log: Path
    error_log: Path
    client: httpx.Client = field(repr=False)

    @classmethod
    def start(
        cls, upstream: str, folder: Path, *extra: str, env: dict[str, str] | None = None, store_url: str | None = None
    ) -> Gateway:
        port = free_port()
        store_url = store_url or f"sqlite:///{folder / 'keyscope.db'}"
        init_store(store_url)
        access_log = folder / "access.log"
        error_log = folder / "stderr.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
        environment.update(KEYSCOPE_ADMIN_TOKEN=ADMIN_TOKEN, **(env or {}))
        command = [PYTHON, "-m", "keyscope.serve.server", "--upstream", upstream, "--store", store_url,
                   "--port", str(port), *extra]
        with access_log.open("ab") as out, error_log.open("ab") as err:
            process = subprocess.Popen(command, env=environment, stdout=out, stderr=err)
        try:
            wait_listening(port, process, "keyscope serve")
        except RuntimeError as exc:
            stop(process)
            raise RuntimeError(f"{exc}: {error_log.read_text()[-2000:]}") from None
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        return cls(port, process, store_url, access_log, error_log, client)

    def stop(self) -> None:
        self.client.close()
        stop(self.process)

    # management API ------------------------------------------------------------------------------
    def admin(self, method: str, path: str, doc: Any = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        return self.client.request(method, path, json=doc, headers=headers)

    def create_application(self, application_id: str) -> None:
        response = self.admin("POST", "/provisioning/1/applications", {"applicationId": application_id})
        assert response.status_code == 201, response.text

    def create_entity(self, entity_id: str) -> None:
        response = self.admin("POST", "/provisioning/1/entities", {"entityId": entity_id})
        assert response.status_code == 201, response.text

    def create_key(self, name: str, *platform: dict[str, Any], **fields: Any) -> Key:
        doc = {"name": name, **fields}
        if platform:
            doc["platform"] = list(platform)
        response = self.admin("POST", "/settings/2/api-keys", doc)
        assert response.status_code == 200, response.text
        created = response.json()
        return Key(created["id"], created["apiKeySecret"])

    def update_key(self, key: Key, doc: dict[str, Any]) -> None:
        response = self.admin("PUT", f"/settings/2/api-keys/{key.id}", doc)
        assert response.status_code == 200, response.text

    # traffic -------------------------------------------------------------------------------------
    def request(self, method: str, path: str, key: Key | None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"App {key.secret}"
        return self.client.request(method, path, headers=headers, **kwargs)

    def raw(self, data: bytes, method: str = "GET") -> Raw:
        return raw(self.port, data, method)


@dataclass(frozen=True)
class Key:
    id: str
    secret: str

    def header(self) -> bytes:
        return b"Authorization: App " + self.secret.encode() + b"\r\n"


@dataclass
class Raw:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw(port: int, data: bytes, method: str = "GET", timeout: float = 30.0) -> Raw:
    """Send `data` exactly as given and parse one response (ask for `Connection: close` in `data`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        body = response.read()
        return Raw(response.status, response.getheaders(), body)


def request_bytes(method: str, target: str, key: Key | None, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: gateway.test", "Connection: close", *headers]
    head = "\r\n".join(lines).encode() + b"\r\n"
    if key is not None:
        head += key.header()
    if body or method in ("POST", "PUT", "PATCH"):
        head += f"Content-Length: {len(body)}\r\n".encode()
    return head + b"\r\n" + body


# requests that name given ids where an endpoint declares them ---------------------------------------
def sample_path(endpoint: Endpoint) -> str:
    parts = []
    for segment in endpoint.path.split("/"):
        parts.append("p-" + segment[1:-1] if segment.startswith("{") else segment)
    return "/".join(parts)


def ids_doc(application_id: str | None, entity_id: str | None) -> dict[str, str]:
    doc = {}
    if application_id is not None:
        doc["applicationId"] = application_id
    if entity_id is not None:
        doc["entityId"] = entity_id
    return doc


def plant(location: IdLocation, doc: dict[str, Any], ids: dict[str, str]) -> None:
    """Put `ids` into `doc` at a JSON location (`messages[]` gets one element)."""
    node: Any = doc
    for step in location.path:
        child = node.setdefault(step.name, [{}] if step.each else {})
        node = child[0] if step.each else child
    node.update(ids)


def endpoint_request(
    endpoint: Endpoint, application_id: str | None, entity_id: str | None
) -> tuple[str, dict[str, Any]]:
    """(target, httpx keyword arguments) for a request naming the ids at every declared location."""
    ids = ids_doc(application_id, entity_id)
    target = sample_path(endpoint)
    kwargs: dict[str, Any] = {}
    kinds = {location.kind for location in endpoint.ids}
    if "query" in kinds:
        target += "?" + "&".join(f"{k}={v}" for k, v in ids.items())
    if "form" in kinds:
        kwargs["data"] = {"from": "sender@example.com", **ids}
    if "json" in kinds:
        doc: dict[str, Any] = {"note": "sample"}
        for location in endpoint.ids:
            if location.kind == "json":
                plant(location, doc, ids)
        kwargs["json"] = doc
    if not kinds and endpoint.method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = {"note": "no ids here"}
    return target, kwargs


# the world of keys the gateway fixtures make (tests/gateway/conftest.py) --------------------------------------
APP_A, APP_B = "app-a", "app-b"
ENT_A, ENT_B = "ent-a", "ent-b"


@dataclass(frozen=True)
class World:
    primary: Key
    app: Key  # app-a, entity unconstrained
    pair: Key  # app-a / ent-a
    entity: Key  # ent-a, application unconstrained
    fill: Key  # app-a / ent-a, FILL
    force: Key  # app-a / ent-a, FORCE
    two: Key  # app-a / ent-a and app-b / ent-b
