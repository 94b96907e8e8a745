"""Each `keyscope serve` setting is declared once (a field of keyscope.core.settings.Settings): from that one
declaration come its flag, its KEYSCOPE_* variable, its YAML key and its row of the README's options table.

`.venv/bin/python tests/test_settings.py` rewrites the README's table from the declarations.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keyscope.core.settings import OPTIONS, ConfigError, load
from keyscope.core.settings_option import Option
from keyscope.core.settings_sources import CONFIG_ENV, CONFIG_HELP, add_flags, gather, given_flags

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = ("<!-- options table: generated from keyscope.core.settings; "
          "`.venv/bin/python tests/test_settings.py` rewrites it -->")
UPSTREAM = "http://127.0.0.1:9"


def render_table() -> str:
    """The README's options table: one row per declared setting, then `--config`."""
    rows = ["| option | default | what |", "| --- | --- | --- |"]
    for option in OPTIONS:
        bool_flags = f"`{option.flag}`, `--no-{option.dashed}`"
        flag = bool_flags if option.kind == "bool" else f"`{option.flag} {option.metavar}`"
        rows.append(f"| {flag} | {option.shown_default} | {option.help} |")
    rows.append(f"| `--config FILE` | `{CONFIG_ENV}` | {CONFIG_HELP} |")
    return "\n".join(rows) + "\n"


def readme_table(text: str) -> tuple[int, int]:
    """Where the table after the marker starts and ends in README.md's text."""
    assert text.count(MARKER) == 1, f"README.md must hold the line {MARKER} once, right above the options table"
    start = text.index(MARKER) + len(MARKER) + 1
    end = start
    while text.startswith("|", end):
        end = text.index("\n", end) + 1
    return start, end


def test_the_readme_options_table_is_the_declared_one() -> None:
    text = README.read_text(encoding="utf-8")
    start, end = readme_table(text)
    assert text[start:end] == render_table(), (
        "README.md's options table differs from the settings declared in keyscope.core.settings: "
        "run `.venv/bin/python tests/test_settings.py` to rewrite it"
    )


def test_declarations_are_complete() -> None:
    for option in OPTIONS:
        assert option.help and "|" not in option.help + (option.metavar or ""), option.name  # a table cell each
        assert (option.metavar is None) == (option.kind == "bool"), option.name


def _sample(option: Option) -> tuple[str, object]:
    """A value of the option's type, as text and as read."""
    return {
        "int": ("7", 7), "float": ("2.5", 2.5), "float | None": ("2.5", 2.5), "bool": ("false", False),
        "tuple[str, ...]": ("10.0.0.0/8, 127.0.0.1", ("10.0.0.0/8", "127.0.0.1")),
    }.get(option.kind, ("some text", "some text"))


@pytest.mark.parametrize("option", OPTIONS, ids=[option.name for option in OPTIONS])
def test_every_setting_is_a_flag_a_variable_and_a_key(option: Option, tmp_path: Path) -> None:
    text, value = _sample(option)
    parser = argparse.ArgumentParser()
    add_flags(parser, OPTIONS)
    argv = [option.flag] if value is True else [f"--no-{option.dashed}"] if value is False else [option.flag, text]
    args = parser.parse_args(argv)
    assert gather(OPTIONS, given_flags(args, OPTIONS), environ={}) == {option.name: value}
    assert gather(OPTIONS, {}, environ={option.env: text}) == {option.name: value}
    for key in (option.name, option.dashed):
        file = tmp_path / f"{key}.yaml"
        file.write_text(f"{key}: {text if option.kind != 'tuple[str, ...]' else '[' + text + ']'}\n")
        assert gather(OPTIONS, {}, environ={}, config_file=str(file)) == {option.name: value}


@pytest.mark.parametrize(
    ("cidr", "message"),
    [("10.0.0.0/33", "trusted-proxies: '10.0.0.0/33' is not an IP address or CIDR range"),
     ("fe80::1%eth0", "trusted-proxies: 'fe80::1%eth0' carries an IPv6 zone")],
)
def test_trusted_proxies_are_read_as_every_other_range(cidr: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load({"upstream": UPSTREAM, "trusted_proxies": f"127.0.0.1,{cidr}"}, environ={})
    assert str(caught.value) == message


def _serve(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
    return subprocess.run(
        [sys.executable, "-m", "keyscope.serve.server", "--upstream", UPSTREAM, "--port", "0", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd, env={**clean, **(env or {})},
    )


def test_a_flag_beats_the_environment_which_beats_the_file(tmp_path: Path) -> None:
    (tmp_path / "k.yaml").write_text("workers: 0\n")
    missing = f"sqlite:///{tmp_path / 'missing.db'}"  # checked after the settings: it says they were accepted
    env = {"KEYSCOPE_CONFIG": "k.yaml", "KEYSCOPE_STORE": missing}
    from_file = _serve(cwd=tmp_path, env=env)
    from_env = _serve(cwd=tmp_path, env={**env, "KEYSCOPE_WORKERS": "2"})
    from_flag = _serve("--workers", "2", cwd=tmp_path, env={**env, "KEYSCOPE_WORKERS": "0"})
    assert (from_file.returncode, from_env.returncode, from_flag.returncode) == (2, 2, 2)
    assert from_file.stderr == "keyscope serve: workers must be at least 1\n"
    assert "does not exist" in from_env.stderr and "does not exist" in from_flag.stderr, (from_env, from_flag)


def test_a_flag_of_the_wrong_type_is_a_usage_error(tmp_path: Path) -> None:
    result = _serve("--max-headers", "many", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "keyscope serve: error: argument --max-headers: invalid int value: 'many'"


if __name__ == "__main__":
    readme = README.read_text(encoding="utf-8")
    table_start, table_end = readme_table(readme)
    README.write_text(readme[:table_start] + render_table() + readme[table_end:], encoding="utf-8")
    print(f"rewrote the options table of {README}")
