"""The CLI's own errors, and a refusal of the management API as lines for stderr.

What an error body says is read by keyscope.core.errors.describe (the web interface reads it there too); this
module only words it for a terminal: a headline, then one `field: message` line per message, each naming the
command-line option the field came from when the command knows it.
"""

from __future__ import annotations

from keyscope.cli.api import Refused
from keyscope.core.errors import ErrorText


class UsageError(Exception):
    """A command line that argparse accepts but that asks for nothing: exit 2, like argparse's own errors."""


class Failed(Exception):
    """An error found by the CLI itself while running a command (a key that is not there, an ambiguous name):
    one line on stderr, exit `status`."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def refused_fields(error: ErrorText) -> set[str]:
    return {name for name, _ in error.fields}


def flag_for(field: str, flags: dict[str, str]) -> str | None:
    """The option that gave `field` (`platform[1].action` -> `--link transactional::force`), if known."""
    for name in sorted(flags, key=len, reverse=True):
        if field == name or field.startswith((f"{name}.", f"{name}[")):
            return flags[name]
    return None


def error_lines(refusal: Refused) -> list[str]:
    """The API's own error text, in either family: a headline, then one `field: message` line per message.

    The refusal's `message` replaces the headline with the web interface's wording; its `flags` name, on each
    field's line, the command-line option that field came from."""
    error = refusal.error
    if refusal.message is not None:
        headline = f"{refusal.message} (HTTP {error.status})"
    elif error.headline is not None:
        headline = f"{error.headline} (HTTP {error.status})"
    else:
        headline = f"HTTP {error.status}"
    lines = [f"keyscope: refused: {headline}"]
    for field, messages in error.fields:
        flag = flag_for(field, refusal.flags)
        for message in messages:
            line = f"{field}: {message}"
            lines.append(f"  {line}" if flag is None else f"  {flag}: {line.strip()}")
    return lines
