"""Where `keyscope serve` settings come from: its flags, KEYSCOPE_* environment variables and a YAML file.

All three are read against the declarations (`settings_option.Option`), so a setting added to `Settings` is at
once a flag, a variable and a key of the file. Precedence is flag > environment > file > default, per setting; a
flag not given is None (not there). Values come out typed but not yet checked: `settings.validate` checks them,
whichever source they came from. A conversion error names where the value came from (`KEYSCOPE_PORT`, `--port`,
`keyscope.yaml: port`).
"""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from keyscope.core.settings_option import ConfigError, Option

CONFIG_ENV = "KEYSCOPE_CONFIG"
CONFIG_HELP = "YAML file with the same settings (`upstream: ...`, `key_cache_ttl: ...`)"
"""`--config FILE`: not a setting but where settings are, so declared here (and rendered in the README's table)."""
WORKER_ENV = "KEYSCOPE_WORKER_SETTINGS"
"""How `serve --workers N` hands the validated settings to the worker processes it spawns."""

OTHER_ENV = frozenset({
    CONFIG_ENV,  # the YAML file (--config)
    "KEYSCOPE_URL",  # the CLI's --url and --token: a gateway to manage remotely
    "KEYSCOPE_TOKEN",
    WORKER_ENV,  # set by `serve --workers N` for its workers
    # the test suite's switches (tests/conftest.py and friends), set in CI beside a running gateway:
    "KEYSCOPE_TEST_STORES",
    "KEYSCOPE_TEST_PG",
    "KEYSCOPE_REQUIRE_BROWSER",
    "KEYSCOPE_REQUIRE_DIFFERENTIAL",
    "KEYSCOPE_REQUIRE_NGINX",
    "KEYSCOPE_SCREENSHOTS",
})
"""KEYSCOPE_* variables that are not settings but are keyscope's own; `KEYSCOPE_DIFFERENTIAL_*` too."""
OTHER_ENV_PREFIXES = ("KEYSCOPE_DIFFERENTIAL_",)

_FLAG_TYPES: dict[str, type] = {"int": int, "float": float, "float | None": float}
"""What argparse converts a flag's text to (its `invalid int value` error is then argparse's usual one)."""


def add_flags(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """One flag per setting (`--NAME/--no-NAME` for a yes/no one), then `--config`. Every default is None, so
    that what was not typed does not hide the environment and the file."""
    for option in options:
        if option.kind == "bool":
            parser.add_argument(option.flag, dest=option.name, default=None, action=argparse.BooleanOptionalAction,
                                help=help_line(option))
        elif option.kind == "tuple[str, ...]":  # a list: the flag may be repeated, each may hold commas
            parser.add_argument(option.flag, dest=option.name, default=None, action="append", metavar=option.metavar,
                                help=help_line(option))
        else:
            parser.add_argument(option.flag, dest=option.name, default=None, type=_FLAG_TYPES.get(option.kind, str),
                                metavar=option.metavar, help=help_line(option))
    parser.add_argument("--config", metavar="FILE", default=None, help=f"{_plain(CONFIG_HELP)} ({CONFIG_ENV})")


def given_flags(args: argparse.Namespace, options: Sequence[Option]) -> dict[str, Any]:
    """The settings' flags as parsed by a parser `add_flags` set up (None: not given)."""
    return {option.name: getattr(args, option.name, None) for option in options}


def help_line(option: Option) -> str:
    """The flag's line of `--help`: its README text, then its default (where it has one)."""
    shown = _plain(option.shown_default)
    if shown == "none":
        return _plain(option.help)
    return _plain(option.help) + (f" {shown}" if shown.startswith("(") else f" (default {shown})")


def _plain(markdown: str) -> str:
    return markdown.replace("`", "").replace("%", "%%")  # argparse formats help with %


def gather(
    options: Sequence[Option],
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> dict[str, Any]:
    """The settings given by any source, converted to their fields' types; what none gives is left out."""
    by_name = {option.name: option for option in options}
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    unknown = set(flags) - set(by_name)
    if unknown:
        raise ConfigError(f"unknown setting {sorted(unknown)[0]!r}")
    check_environment(environ, options)
    path = config_file or environ.get(CONFIG_ENV)
    merged: dict[str, tuple[Any, str]] = {}
    if path:
        for name, value in _read_file(path, by_name).items():
            merged[name] = (value, f"{path}: {by_name[name].dashed}")
    for option in options:
        if option.env in environ:
            merged[option.name] = (environ[option.env], option.env)
    for name, value in flags.items():
        merged[name] = (value, by_name[name].flag)
    return {name: _convert(by_name[name], value, origin) for name, (value, origin) in merged.items()}


def check_environment(environ: Mapping[str, str], options: Sequence[Option]) -> None:
    """A KEYSCOPE_* variable that is neither a setting nor one of keyscope's own is a typo (KEYSCOPE_MAX_BODY
    for KEYSCOPE_MAX_BODY_SIZE) that would otherwise be ignored in silence: an error, as an unknown YAML key is."""
    settings = {option.env for option in options}
    for env_name in sorted(environ):
        if not env_name.startswith("KEYSCOPE_") or env_name in settings or env_name in OTHER_ENV:
            continue
        if env_name.startswith(OTHER_ENV_PREFIXES):
            continue
        close = difflib.get_close_matches(env_name, sorted(settings | OTHER_ENV), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"unknown environment variable {env_name} (not a keyscope setting{hint})")


def _read_file(path: str, by_name: Mapping[str, Option]) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of setting: value")
    result: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in by_name:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        result[name] = value
    return result


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(option: Option, value: Any, origin: str) -> Any:
    """Turn a value from any source (strings from the environment, YAML scalars) into the field's type."""
    kind = option.kind
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError
        if kind == "int":
            if isinstance(value, (bool, float)):
                raise ValueError
            return int(str(value).strip())
        if kind in ("float", "float | None"):
            if isinstance(value, bool):
                raise ValueError
            return float(str(value).strip())
        if kind == "tuple[str, ...]":
            items = value if isinstance(value, (list, tuple)) else [value]
            return tuple(part.strip() for item in items for part in str(item).split(",") if part.strip())
        if value is None:
            return None
        if isinstance(value, (dict, list)):
            raise ValueError
        return str(value)
    except ValueError:
        raise ConfigError(f"{origin}: invalid value {value!r} (expected {kind.replace(' | None', '')})") from None
