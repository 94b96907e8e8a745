"""The world the differential tests run in: readers behind a tee behind a real `keyscope serve`, and its keys.

`check(attack, key, endpoint)` is the property the suite proves: keyscope refused the request (4xx, and the tee
was not reached), or it forwarded it and every reader dispatched the same method and path and read exactly the
approved ids at the endpoint's declared places (see oracle.py). A reader that refused the forwarded request
itself (an `error`, a 4xx, or closing without a byte of answer) did not act on it and is fine; one that answered
5xx, garbage or nothing in time is reported as broken, since that is as likely the harness as the framework.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from gateway_helpers import ADMIN_TOKEN, Gateway, Key, free_port, raw, stop, wait_listening

from . import oracle
from .attacks import Attack
from .backends import Running
from .tee import Tee

APP_A, APP_B, ENT_A, ENT_B = "app-a", "app-b", "ent-a", "ent-b"
KEYSCOPE = Path(sys.executable).parent / "keyscope"
GATEWAY_SOURCE = os.environ.get("KEYSCOPE_DIFFERENTIAL_GATEWAY_SRC", "")


@dataclass(frozen=True)
class Linked:
    """A key and the ids a forwarded request must carry at declared places (None: primary, none checked)."""

    name: str
    key: Key
    entry: dict[str, str] | None


# key name -> (link sent to the management API, ids approved at declared places)
KEYS: dict[str, tuple[dict[str, str] | None, dict[str, str] | None]] = {
    "primary": (None, None),
    "pair": ({"applicationId": APP_A, "entityId": ENT_A}, {"applicationId": APP_A, "entityId": ENT_A}),
    "app_fill": ({"applicationId": APP_A, "action": "FILL"}, {"applicationId": APP_A}),
    "pair_fill": ({"applicationId": APP_A, "entityId": ENT_A, "action": "FILL"},
                  {"applicationId": APP_A, "entityId": ENT_A}),
    "force": ({"applicationId": APP_A, "entityId": ENT_A, "action": "FORCE"},
              {"applicationId": APP_A, "entityId": ENT_A}),
    "entity": ({"entityId": ENT_A}, {"entityId": ENT_A}),
}


def start_gateway(upstream: str, folder: Path) -> Gateway:
    """`keyscope serve` through its console script, on a fresh SQLite store in `folder`."""
    port = free_port()
    store_url = f"sqlite:///{folder / 'keyscope.db'}"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
    environment["KEYSCOPE_ADMIN_TOKEN"] = ADMIN_TOKEN
    if GATEWAY_SOURCE:  # another keyscope's src/ (say, an older commit's, to see what it let through)
        environment["PYTHONPATH"] = GATEWAY_SOURCE
    # `serve` refuses a store that does not exist: made by this keyscope's `init` (the format is the same)
    subprocess.run([str(KEYSCOPE), "init", "--store", store_url], env={**environment, "PYTHONPATH": ""}, check=True,
                   capture_output=True, timeout=60)
    command = [str(KEYSCOPE), "serve", "--upstream", upstream, "--store", store_url, "--port", str(port)]
    access_log, error_log = folder / "access.log", folder / "stderr.log"
    with access_log.open("ab") as out, error_log.open("ab") as err:
        process = subprocess.Popen(command, env=environment, stdout=out, stderr=err)
    try:
        wait_listening(port, process, "keyscope serve")
    except RuntimeError as exc:
        stop(process)
        raise RuntimeError(f"{exc}: {error_log.read_text()[-2000:]}") from None
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    return Gateway(port, process, store_url, access_log, error_log, client)


def seed(gateway: Gateway) -> dict[str, Linked]:
    """Applications app-a, app-b, entities ent-a, ent-b (step 5 needs them to exist) and the keys in KEYS."""
    for application in (APP_A, APP_B):
        gateway.create_application(application)
    for entity in (ENT_A, ENT_B):
        gateway.create_entity(entity)
    keys = {}
    for name, (link, entry) in KEYS.items():
        key = gateway.create_key(name, link) if link else gateway.create_key(name)
        keys[name] = Linked(name, key, entry)
    return keys


@dataclass
class Outcome:
    status: int | None
    body: bytes
    echoes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        return self.status is None or 400 <= self.status < 500


@dataclass
class World:
    readers: list[Running]
    unavailable: dict[str, str]
    tee: Tee
    gateway: Gateway
    keys: dict[str, Linked]
    # (test label, reader, problem kind) -> count; printed at the end of the session with KEYSCOPE_DIFFERENTIAL_TALLY=1
    tally: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    first_seen: dict[tuple[str, str, str], str] = field(default_factory=dict)
    label: str = ""
    log_offset: int = 0
    record_only: bool = os.environ.get("KEYSCOPE_DIFFERENTIAL_TALLY") == "1"

    def __repr__(self) -> str:  # Hypothesis prints the fixtures of a failing example: keep it to the point
        return f"World(readers={self.names}, keyscope port {self.gateway.port}, tee port {self.tee.port})"

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # Hypothesis' printer would list every field
        printer.text(repr(self))

    @property
    def names(self) -> list[str]:
        return [reader.name for reader in self.readers]

    def send(self, data: bytes) -> tuple[int | None, bytes]:
        """Write `data` to keyscope as it stands and read one answer; (None, b"") if it closed without one."""
        try:
            answer = raw(self.gateway.port, data, timeout=60)
        except (ConnectionError, OSError, ValueError) as exc:  # http.client's BadStatusLine is a ValueError
            return None, repr(exc).encode()
        return answer.status, answer.body

    def run(self, attack: Attack, key: str) -> Outcome:
        """Send `attack` with a key and collect every reader's echo (none when refused)."""
        before = self.tee.forwarded
        status, body = self.send(attack.raw(self.keys[key].key.secret))
        outcome = Outcome(status, body)
        if outcome.refused:
            assert self.tee.forwarded == before, f"keyscope answered {status} but forwarded:\n{attack}"
            return outcome
        assert status == 200, f"keyscope answered {status} {body[:300]!r} to\n{attack}"
        outcome.echoes = json.loads(body)["readers"]
        return outcome

    def check(self, attack: Attack, key: str, endpoint: oracle.Endpoint) -> Outcome:
        outcome = self.run(attack, key)
        self.tally[self.label, "keyscope", "refused" if outcome.refused else "forwarded"] += 1
        if outcome.refused:
            return outcome
        failures: dict[tuple[tuple[str, ...], str], list[str]] = {}  # readers that saw the same, together
        for name in self.names:
            echo = outcome.echoes.get(name, {"_broken": "the tee has no answer from it"})
            found = self.judge(echo, attack, key, endpoint)
            for problem in found:
                self.record((self.label, name, _kind(problem)), f"{key} key: {attack}\n    -> {problem}")
            if found:
                failures.setdefault((tuple(found), _view(echo)), []).append(name)
        if failures and not self.record_only:
            report = []
            for (found, view), names in failures.items():
                who = "[" + ", ".join(names) + "]"
                report += [f"{who} {problem}" for problem in found] + [f"{who} saw {view}"]
            raise AssertionError(
                f"keyscope forwarded ({key} key, {endpoint}):\n{attack}\n\nforwarded bytes: {self.tee.last[:1500]!r}"
                "\n\n" + "\n".join(report))
        return outcome

    def collect_reasons(self) -> None:
        """Count why keyscope refused what it refused since the last call, from its access log (a `legacy` body
        often says only "Bad request"). The log is written at most every half second: call this after a test."""
        time.sleep(0.6)
        with self.gateway.access_log.open("rb") as log:
            log.seek(self.log_offset)
            lines = log.read().splitlines(keepends=True)
        for line in lines:
            if not line.endswith(b"\n"):
                break
            self.log_offset += len(line)
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("decision") == "refused" and entry.get("path", "").split("/")[1:2] != ["provisioning"]:
                self.tally[self.label, "keyscope", f"refused {entry['status']} {entry['reason']}"] += 1

    def record(self, what: tuple[str, str, str], example: str) -> None:
        self.tally[what] += 1
        self.first_seen.setdefault(what, example)

    def judge(self, echo: dict[str, Any], attack: Attack, key: str, endpoint: oracle.Endpoint) -> list[str]:
        if "_broken" in echo:
            return [f"broken: {echo['_broken']}"]
        status = echo.get("_status")
        if status is not None and status >= 500:
            return [f"broken: answered {status}: {echo.get('error')!r}"]
        if echo.get("_closed") or echo.get("error") is not None or (status is not None and status >= 400):
            return []  # the framework refused the request itself: it did not act on it
        return oracle.problems(echo, attack.method, attack.path, endpoint, self.keys[key].entry)


def _kind(problem: str) -> str:
    """A problem's kind for the tally: method, path, broken, unread, loose (a near-name), or the id misread."""
    if problem.startswith(("method", "path", "broken")):
        return problem.split(":", 1)[0]
    if problem.startswith("no declared place"):
        return "unread"
    if "a loose binder" in problem:
        return "loose"
    return "other-values" if "also has the values" in problem else "id"


def _view(echo: dict[str, Any]) -> str:
    shown = {k: echo.get(k) for k in ("method", "path", "query", "form", "files", "json", "error") if k in echo}
    text = json.dumps(shown, ensure_ascii=False)
    return text if len(text) <= 1200 else text[:1200] + "..."
