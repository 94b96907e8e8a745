"""`keyscope authorize` as the tests run it: a real process on 127.0.0.1, a store made with the keyscope CLI.

The authorizer has no management API, so applications, entities and keys are made as an operator would beside
it: with the CLI, in-process against the same store.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gateway_helpers import PYTHON, Key, free_port, init_store, stop, wait_listening


def cli(store_url: str, *args: str) -> str:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
    done = subprocess.run([PYTHON, "-m", "keyscope.cli", "--store", store_url, *args], check=False, env=environment,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


_API = """
import asyncio, json, secrets, sys
from keyscope.control import admin
from keyscope.decide.auth import KeyAuthenticator
from keyscope.store import store_from_url

async def main():
    store = store_from_url(sys.argv[1])
    await store.open()
    try:
        token = secrets.token_urlsafe(16)
        app = admin.create_app(store, admin_token=token, authenticator=KeyAuthenticator(store))
        status, _, body = await admin.call(app, sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), token=token)
        print(status, body.decode())
    finally:
        await store.close()

asyncio.run(main())
"""


def api(store_url: str, method: str, path: str, doc: object) -> tuple[int, object]:
    """One management API call, in-process against the store (for what the CLI has no option for)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
    done = subprocess.run([PYTHON, "-c", _API, store_url, method, path, json.dumps(doc)], check=False,
                          env=environment, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    status, _, body = done.stdout.partition(" ")
    return int(status), json.loads(body) if body.strip() else None


def seeded_store(folder: Path) -> tuple[str, dict[str, Key]]:
    """A store with applications `marketing` and `transactional`, entity `customer-a`, and keys: `primary`,
    `linked` (marketing), `pair` (marketing/customer-a), `fill` (marketing, FILL), `limited` (marketing, one
    request an hour)."""
    store_url = f"sqlite:///{folder / 'keyscope.db'}"
    init_store(store_url)
    cli(store_url, "apps", "create", "marketing")
    cli(store_url, "apps", "create", "transactional")
    cli(store_url, "entities", "create", "customer-a")
    keys = {}
    for name, links in (
        ("primary", ["--primary"]),
        ("linked", ["--application", "marketing"]),
        ("pair", ["--application", "marketing", "--entity", "customer-a"]),
        ("fill", ["--application", "marketing", "--action", "FILL"]),
    ):
        created = json.loads(cli(store_url, "--json", "keys", "create", "--name", name, *links))
        keys[name] = Key(created["id"], created["apiKeySecret"])
    status, created = api(store_url, "POST", "/settings/2/api-keys", {
        "name": "limited", "platform": [{"applicationId": "marketing"}], "rateLimits": [{"requests": 1, "per": "hour"}],
    })
    assert status == 200 and isinstance(created, dict), created
    keys["limited"] = Key(created["id"], created["apiKeySecret"])
    return store_url, keys


@dataclass
class Authorizer:
    port: int
    process: subprocess.Popen[bytes]
    store_url: str
    access_log: Path
    error_log: Path

    @classmethod
    def start(cls, contract: str, store_url: str, folder: Path, *extra: str) -> Authorizer:
        port = free_port()
        access_log, error_log = folder / f"authorize-{contract}.log", folder / f"authorize-{contract}.err"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
        command = [PYTHON, "-m", "keyscope.cli", "authorize", "--contract", contract, "--store", store_url,
                   "--port", str(port), *extra]
        with access_log.open("ab") as out, error_log.open("ab") as err:
            process = subprocess.Popen(command, env=environment, stdout=out, stderr=err)
        try:
            wait_listening(port, process, "keyscope authorize")
        except RuntimeError as exc:
            stop(process)
            raise RuntimeError(f"{exc}: {error_log.read_text()[-2000:]}") from None
        return cls(port, process, store_url, access_log, error_log)

    def lines(self) -> list[dict[str, object]]:
        """The access lines so far (they are gathered for up to half a second before they are written)."""
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.startswith("{")]

    def stop(self) -> None:
        stop(self.process)
