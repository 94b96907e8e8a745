"""An https:// upstream: the certificate is checked against the system's trust store (here a test CA given through
SSL_CERT_FILE, as an operator with a private CA would) and against the upstream's host name."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_helpers import Gateway, free_port, stop, wait_listening

OPENSSL = "openssl"


def _run(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificates(folder: Path, names: str) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for `names` (subjectAltName syntax)."""
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", "/CN=keyscope test CA", cwd=folder)
    _run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
         "-subj", "/CN=upstream", cwd=folder)
    (folder / "ext.cnf").write_text(f"subjectAltName={names}\n")
    _run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=folder)
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


@pytest.fixture(scope="module")
def tls_echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    folder = tmp_path_factory.mktemp("tls")
    try:
        ca, certificate, key = _certificates(folder, "DNS:localhost")  # not for 127.0.0.1 by address
    except FileNotFoundError:
        pytest.skip("needs the openssl command")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "keyscope.echo:app", "--host", "127.0.0.1",
                                "--port", str(port), "--ssl-certfile", str(certificate), "--ssl-keyfile", str(key),
                                "--log-level", "warning"])
    wait_listening(port, process, "TLS echo backend")
    yield port, ca
    stop(process)


def test_an_https_upstream_is_reached_when_its_certificate_checks_out(
    tls_echo: tuple[int, Path], tmp_path: Path
) -> None:
    port, ca = tls_echo
    gateway = Gateway.start(f"https://localhost:{port}", tmp_path, env={"SSL_CERT_FILE": str(ca)})
    try:
        gateway.create_application("app-a")
        key = gateway.create_key("tls", {"applicationId": "app-a"})
        answer = gateway.request("GET", "/sms/1/logs?applicationId=app-a", key)
        assert answer.status_code == 200, answer.text
        assert answer.json()["query"] == "applicationId=app-a"
        again = gateway.request("GET", "/sms/1/logs?applicationId=app-a", key)  # over the pooled connection
        assert again.status_code == 200
    finally:
        gateway.stop()


@pytest.mark.parametrize("why", ["CA not trusted", "certificate not for this host"])
def test_an_https_upstream_whose_certificate_does_not_check_out_is_a_502(
    tls_echo: tuple[int, Path], tmp_path: Path, why: str
) -> None:
    """Not signed by a trusted CA, or not for the host keyscope connects to: nothing is sent, 502."""
    port, ca = tls_echo
    if why == "CA not trusted":
        (tmp_path / "empty.pem").write_text("")
        upstream, env = f"https://localhost:{port}", {"SSL_CERT_FILE": str(tmp_path / "empty.pem")}
    else:  # the same listener by its address, which the certificate does not name
        upstream, env = f"https://127.0.0.1:{port}", {"SSL_CERT_FILE": str(ca)}
    gateway = Gateway.start(upstream, tmp_path, env=env)
    try:
        gateway.create_application("app-a")
        key = gateway.create_key("tls", {"applicationId": "app-a"})
        answer = gateway.request("GET", "/sms/1/logs?applicationId=app-a", key)
        assert answer.status_code == 502, answer.text
    finally:
        gateway.stop()
