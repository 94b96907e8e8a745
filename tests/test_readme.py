"""The README's CLI example runs as written: each line of the ```sh block after `<!-- cli-example` in README.md,
in order, in an empty folder, with the virtualenv's `keyscope` first on PATH (what `. .venv/bin/activate`
does), exits 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- cli-example"


def cli_example() -> list[str]:
    text = README.read_text(encoding="utf-8")
    assert text.count(MARKER) == 1, f"README.md must hold exactly one {MARKER!r} marker"
    after = text[text.index(MARKER):]
    block = re.match(r"<!-- cli-example[^\n]*-->\n```sh\n(.*?)\n```\n", after, re.DOTALL)
    assert block is not None, "the marker must be followed directly by a ```sh block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_block_is_keyscope_commands() -> None:
    lines = cli_example()
    assert len(lines) >= 10
    assert all(line.startswith("keyscope ") for line in lines), lines


def test_the_cli_example_runs_as_written_in_a_fresh_folder(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "keyscope").is_file(), f"no keyscope console script next to {sys.executable}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    for line in cli_example():
        result = subprocess.run(
            line, shell=True, executable="/bin/sh", cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, f"{line}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "keyscope.db").is_file()
