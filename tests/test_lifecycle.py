"""How `keyscope serve` and `make demo` stop: real processes, real signals.

The access log gathers lines and writes them every half second, so a stop that forgets them loses the record of
the last requests. Every request that got an answer must have exactly one line on stdout once the process has
exited, whatever stopped it: SIGTERM (what orchestrators send), SIGINT (Ctrl-C), two SIGINTs (Ctrl-C twice,
which cuts the drain short), and SIGTERM to the supervisor of `--workers 2`. The upstream is a backend run in
this test process, so that a request can be held upstream until the gateway is draining: its answer, sent during
the drain, must be logged too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from gateway_helpers import Gateway, free_port

EXIT_TIMEOUT = 30.0


class _Backend(BaseHTTPRequestHandler):
    """200 with a small JSON body; `/hold` waits (in its own thread) until the test releases it."""

    held = threading.Event()
    release = threading.Event()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.startswith("/hold"):
            type(self).held.set()
            type(self).release.wait(EXIT_TIMEOUT)
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway gave up on it (a forced exit)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[str]:
    _Backend.held = threading.Event()
    _Backend.release = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        _Backend.release.set()
        server.shutdown()
        server.server_close()


def _wait(predicate, what: str, timeout: float = EXIT_TIMEOUT) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _start(upstream: str, folder: Path, workers: int) -> Gateway:
    return Gateway.start(upstream, folder, *(("--workers", str(workers)) if workers > 1 else ()))


def _refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _traffic(gateway: Gateway, count: int) -> list[str]:
    """`count` requests, forwarded and refused in turn, each to a path of its own; returns the paths logged
    (the management request that makes the key included)."""
    key = gateway.create_key("lifecycle-primary")
    paths = ["/settings/2/api-keys"]
    for number in range(count):
        if number % 2:
            path = f"/refused/{number}"
            assert gateway.request("GET", path, None).status_code == 401  # no key
        else:
            path = f"/forwarded/{number}"
            assert gateway.request("GET", path, key).status_code == 200
        paths.append(path)
    return paths


def _logged_paths(gateway: Gateway) -> list[str]:
    text = gateway.access_log.read_text()
    assert text == "" or text.endswith("\n"), "the last line is cut short"
    lines = [json.loads(line) for line in text.splitlines()]  # each line is one JSON object
    return [line["path"] for line in lines]


def _stopped(gateway: Gateway, *signals: signal.Signals) -> int:
    gateway.client.close()
    for number in signals:
        gateway.process.send_signal(number)
    return gateway.process.wait(timeout=EXIT_TIMEOUT)


@pytest.mark.parametrize(
    "signals",
    [(signal.SIGTERM,), (signal.SIGINT,)],
    ids=["SIGTERM", "SIGINT"],
)
@pytest.mark.parametrize("workers", [1, 2])
def test_every_answered_request_is_logged_once_at_a_stop(
    backend: str, tmp_path: Path, signals: tuple[signal.Signals, ...], workers: int
) -> None:
    gateway = _start(backend, tmp_path, workers)
    try:
        expected = _traffic(gateway, 9)
        key = gateway.create_key("holder")
        expected.append("/settings/2/api-keys")
        answers: list[int] = []
        holder = threading.Thread(
            target=lambda: answers.append(
                httpx.get(f"http://127.0.0.1:{gateway.port}/hold/drain",
                          headers={"Authorization": f"App {key.secret}"}, timeout=EXIT_TIMEOUT).status_code
            )
        )
        holder.start()
        _wait(_Backend.held.is_set, "the held request to reach the backend")
        gateway.client.close()
        for number in signals:
            gateway.process.send_signal(number)
        # uvicorn logs this as each worker starts its drain (under --workers the supervisor keeps the socket
        # open, so the port still takes connections)
        _wait(lambda: gateway.error_log.read_text().count("Shutting down") >= workers, "the drain to begin")
        _Backend.release.set()
        holder.join(EXIT_TIMEOUT)
        assert answers == [200]  # answered during the drain
        expected.append("/hold/drain")
        code = gateway.process.wait(timeout=EXIT_TIMEOUT)
    finally:
        gateway.stop()
    assert code == 0, gateway.error_log.read_text()[-3000:]
    assert Counter(_logged_paths(gateway)) == Counter(expected)
    assert "Traceback" not in gateway.error_log.read_text()


@pytest.mark.parametrize("workers", [1, 2])
def test_two_sigints_in_a_row_lose_no_line(backend: str, tmp_path: Path, workers: int) -> None:
    """Ctrl-C twice: the second SIGINT, during the drain, makes uvicorn give up the drain and skip the lifespan
    shutdown (the held request is abandoned, so it may or may not have a line). Sent to every process of the
    gateway, as the terminal does: under --workers each worker gets both SIGINTs and the supervisor's SIGTERM."""
    gateway = _start(backend, tmp_path, workers)
    try:
        expected = _traffic(gateway, 12)
        key = gateway.create_key("holder")
        expected.append("/settings/2/api-keys")
        holder = threading.Thread(target=_held_request, args=(gateway.port, key.secret), daemon=True)
        holder.start()
        _wait(_Backend.held.is_set, "the held request to reach the backend")
        processes = [gateway.process.pid, *_children(gateway.process.pid)]
        gateway.client.close()
        _signal_all(processes, signal.SIGINT)
        _wait(lambda: "Waiting for connections to close" in gateway.error_log.read_text(), "the drain to begin")
        _signal_all(processes, signal.SIGINT)
        code = gateway.process.wait(timeout=EXIT_TIMEOUT)
        _Backend.release.set()
        holder.join(EXIT_TIMEOUT)
    finally:
        gateway.stop()
    assert code == 0, gateway.error_log.read_text()[-3000:]
    logged = Counter(_logged_paths(gateway))
    assert logged.pop("/hold/forced", 0) <= 1
    assert logged == Counter(expected)
    # (uvicorn does print the abandoned request's CancelledError: a forced quit cuts a request short)
    assert "Exception in 'lifespan' protocol" not in gateway.error_log.read_text()


def _held_request(port: int, secret: str) -> None:
    try:
        httpx.get(f"http://127.0.0.1:{port}/hold/forced", headers={"Authorization": f"App {secret}"},
                  timeout=EXIT_TIMEOUT)
    except httpx.HTTPError:
        pass  # abandoned by the forced exit


def _signal_all(pids: list[int], number: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass


# make demo --------------------------------------------------------------------------------------------------
def _children(pid: int) -> set[int]:
    """Every descendant of `pid` still running (from /proc, so no extra dependency)."""
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as file:
                    kids = {int(child) for child in file.read().split()}
            except FileNotFoundError:
                continue
            frontier.extend(kids - found)
            found |= kids
    return found


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs /proc to find the demo's children")
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_on_make_demo_exits_cleanly(tmp_path: Path, presses: int) -> None:
    """Ctrl-C sends SIGINT to the whole foreground process group: the demo, the gateway and the echo backend
    all get it at once. They must all end, quietly, with status 0."""
    port, backend_port = free_port(), free_port()
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "keyscope.demo", "--port", str(port), "--backend-port", str(backend_port),
             "--status-port", str(free_port()), "--data-dir", str(tmp_path / "demo-data")],
            stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
        )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # the instructions are printed once both servers listen
            if line.startswith("Ctrl-C stops"):
                break
        else:
            raise AssertionError(f"the demo ended before serving: {stderr_path.read_text()[-3000:]}")
        children = _children(process.pid)
        assert len(children) >= 2  # the gateway and the backend
        group = os.getpgid(process.pid)
        for _ in range(presses):
            os.killpg(group, signal.SIGINT)
        code = process.wait(timeout=EXIT_TIMEOUT)
        _wait(lambda: not any(os.path.exists(f"/proc/{child}") and _running(child) for child in children),
              "the demo's children to exit", timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(os.getpgid(process.pid), signal.SIGKILL)
            process.wait()
    errors = stderr_path.read_text()
    assert "Traceback" not in errors, errors
    assert code == 0, errors
    for number in (port, backend_port):
        assert _refuses_connections(number)


def _running(pid: int) -> bool:
    """A zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
