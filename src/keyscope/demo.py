"""`make demo`: the gateway on 127.0.0.1:8080 in front of the echo backend, with a seeded store.

Every run starts from a fresh demo store (in `demo-data/`), so a second `make demo` needs no cleanup; the keys
are new each time and printed once, with curl commands that show what a linked key may and may not do.

Ctrl-C (or SIGTERM) stops the demo, the gateway and the backend quietly, with exit status 0: stopping is the
demo's normal end, not a failure (the shell convention of 130 is for a program interrupted before it was done).
The gateway and the backend run in a process group of their own, so the terminal's SIGINT reaches only the demo,
which then stops each of them exactly once with SIGTERM (their graceful drain). Left in the terminal's group,
they would get every Ctrl-C as well: a second SIGINT (the demo's own, or a second press) forces uvicorn to
abandon its drain, and the cancelled tasks print their tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from keyscope.core import keys
from keyscope.core.models import ApiKey, Application, Entity, PlatformEntry
from keyscope.store import store_from_url


@dataclass(frozen=True)
class DemoKeys:
    primary: str
    linked: str
    fill: str


async def seed(store_url: str) -> DemoKeys:
    """Two applications, two entities, and one key of each kind the README talks about."""
    store = store_from_url(store_url, create=True)  # the demo's own store: made fresh each run
    await store.open()
    try:
        await store.create_application(Application("marketing", "Marketing"))
        await store.create_application(Application("transactional", "Transactional"))
        await store.create_entity(Entity("customer-a", "Customer A"))
        await store.create_entity(Entity("customer-b", "Customer B"))
        primary = await _create_key(store, "demo-primary", ())
        linked = await _create_key(store, "marketing-customer-a", (PlatformEntry("", "marketing", "customer-a"),))
        fill = await _create_key(store, "marketing-fill", (PlatformEntry("", "marketing", None, "FILL"),))
    finally:
        await store.close()
    return DemoKeys(primary, linked, fill)


async def _create_key(store, name: str, platform: tuple[PlatformEntry, ...]) -> str:  # type: ignore[no-untyped-def]
    secret = keys.new_secret()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    await store.create_key(
        ApiKey(
            id=keys.new_key_id(),
            name=name,
            secret_hash=keys.hash_secret(secret),
            prefix=keys.display_prefix(secret),
            allowed_ips=(),
            valid_from=now,
            valid_to=now + timedelta(days=365),
            enabled=True,
            platform=platform,
            created_at=now,
        )
    )
    return secret


def instructions(gateway: str, demo: DemoKeys, admin_token: str) -> str:
    def curl(*args: str) -> str:
        return "curl -s " + " ".join(shlex.quote(a) for a in args)

    def send(key: str, application: str) -> str:
        body = (
            '{"messages":[{"destinations":[{"to":"41793026727"}],"text":"Hi",'
            f'"applicationId":"{application}","entityId":"customer-a"}}]}}'
        )
        return curl(
            "-X", "POST", f"{gateway}/sms/2/text/advanced",
            "-H", f"Authorization: App {key}", "-H", "Content-Type: application/json", "-d", body,
        )

    return "\n".join(
        [
            "",
            "keyscope demo",
            f"  gateway      {gateway}   (echo backend behind it: it answers with what it received)",
            "  applications marketing, transactional; entities customer-a, customer-b",
            "",
            "Keys (shown once; a new set is made every run):",
            f"  primary (every endpoint)                 {demo.primary}",
            f"  linked to marketing/customer-a           {demo.linked}",
            f"  linked to marketing, action FILL         {demo.fill}",
            f"  admin token (management API)             {admin_token}",
            "",
            "1. Allowed: a linked key sends for its own application and entity (forwarded; see the X-Keyscope-* headers)",
            "   " + send(demo.linked, "marketing"),
            "",
            "2. Refused (403): the same key names another application",
            "   " + send(demo.linked, "transactional"),
            "",
            "3. Refused (403): a linked key may not call the management API",
            "   " + curl(f"{gateway}/provisioning/1/applications", "-H", f"Authorization: App {demo.linked}"),
            "",
            "4. FILL: a log query without applicationId gets the key's own one (see the forwarded query)",
            "   " + curl(f"{gateway}/sms/1/logs?limit=10", "-H", f"Authorization: App {demo.fill}"),
            "",
            "5. The primary key may manage applications",
            "   " + curl(f"{gateway}/provisioning/1/applications", "-H", f"Authorization: App {demo.primary}"),
            "",
            "Ctrl-C stops the gateway and the backend.",
            "",
        ]
    )


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _wait_listening(host: str, port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"keyscope demo: the {what} exited with code {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"keyscope demo: the {what} did not start listening on {host}:{port}")


def _stop(signum: int, frame: object) -> None:
    """SIGTERM stops the demo like Ctrl-C does: children are stopped too, never left behind."""
    raise KeyboardInterrupt


def run(host: str, port: int, backend_port: int, data_dir: Path, status_port: int = 8082) -> int:
    for number, what in ((port, "gateway"), (backend_port, "backend")):
        if not _port_free(host, number):
            print(f"keyscope demo: port {host}:{number} for the {what} is in use; stop what holds it or pass "
                  f"--{'port' if what == 'gateway' else 'backend-port'}", file=sys.stderr)
            return 2
    data_dir.mkdir(parents=True, exist_ok=True)
    db = data_dir / "keyscope.db"
    for leftover in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        leftover.unlink(missing_ok=True)
    store_url = f"sqlite:///{db.resolve()}"
    demo = asyncio.run(seed(store_url))
    signal.signal(signal.SIGTERM, _stop)
    admin_token = secrets.token_urlsafe(24)

    env = dict(os.environ, KEYSCOPE_ADMIN_TOKEN=admin_token)
    backend: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    try:
        backend = subprocess.Popen(
            [sys.executable, "-m", "keyscope.echo", "--host", host, "--port", str(backend_port)], env=env,
            process_group=0,
        )
        _wait_listening(host, backend_port, backend, "backend")
        gateway = subprocess.Popen(
            [
                sys.executable, "-m", "keyscope.cli", "serve",
                "--upstream", f"http://{host}:{backend_port}",
                "--store", store_url, "--host", host, "--port", str(port),
                *(["--status-listen", f"{host}:{status_port}", "--drain-seconds", "0"] if status_port else []),
            ],
            env=env,
            process_group=0,
        )
        _wait_listening(host, port, gateway, "gateway")
        print(instructions(f"http://{host}:{port}", demo, admin_token), flush=True)
        if status_port:
            print(f"Health and readiness: http://{host}:{status_port}/healthz, /readyz", flush=True)
        while gateway.poll() is None and backend.poll() is None:
            time.sleep(0.2)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        _stop_children(gateway, backend)


def _stop_children(*processes: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM to each child still running, then wait for all (SIGKILL past 10 seconds).

    A second Ctrl-C or SIGTERM while this waits is ignored: it would otherwise interrupt the wait with a
    traceback and leave the children behind; the children, in their own process group, never see it."""
    previous = {number: signal.signal(number, signal.SIG_IGN) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        _terminate_and_wait([process for process in processes if process is not None])
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _terminate_and_wait(running: list[subprocess.Popen[bytes]]) -> None:
    for process in running:
        if process.poll() is None:
            process.terminate()
    for process in running:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("demo", help="run the gateway in front of a demo echo backend")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--backend-port", type=int, default=8090)
    parser.add_argument("--data-dir", type=Path, default=Path("demo-data"))
    parser.add_argument("--status-port", type=int, default=8082, help="the status listener's port (0: none)")
    parser.set_defaults(
        func=lambda args: run(args.host, args.port, args.backend_port, args.data_dir, args.status_port)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keyscope")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["demo", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
