"""Opening the listeners of `keyscope serve`, and making sure before start-up that they can be opened.

The gateway's own socket is uvicorn's; the ones beside it (`--admin-listen`, `--status-listen`) are opened here,
one way for both. Their `HOST:PORT` text is parsed where the settings are checked
(`keyscope.core.settings_option.listen_address`), since a bad one must stop start-up like any bad setting.
"""

from __future__ import annotations

import socket

from keyscope.core.settings import Settings
from keyscope.core.settings_option import ConfigError, listen_address


def listen_socket(host: str, port: int, *, share: bool = False) -> socket.socket:
    """Bound and listening, for a listener beside the gateway's (`--admin-listen`, `--status-listen`); `share`:
    SO_REUSEPORT, so that every worker of `--workers N` listens on it. OSError is the caller's to report."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if share:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def check_free(host: str, port: int) -> None:
    """The address must be free now; uvicorn binds it a moment later (SO_REUSEADDR, as uvicorn does).
    ConfigError otherwise, with the one line `keyscope serve` prints."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def check_status_listen(settings: Settings) -> None:
    """`--status-listen`'s address must be free too (it is opened after uvicorn's: a taken one would stop the
    gateway after start-up instead of before)."""
    if settings.status_listen is None:
        return
    host, port = listen_address(settings.status_listen)
    try:
        check_free(host, port)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (status-listen)") from None
