"""The architecture as import-linter contracts (`[tool.importlinter]` in pyproject.toml): a package imports only
the packages below it, and no package's modules import each other in a cycle."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    done = subprocess.run([command, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_no_module_imports_inside_a_function_but_for_start_up_speed():
    """A function-level import dodges a cycle the contracts would otherwise catch; the CLI's are allowed, and only
    there, because `keyscope keys list` must not load uvicorn and aiohttp; the store's, for drivers that are optional."""
    allowed = {"cli/main.py", "cli/parser.py", "cli/explain.py", "store/__init__.py"}
    offenders = []
    for path in sorted((ROOT / "src/keyscope").rglob("*.py")):
        relative = path.relative_to(ROOT / "src/keyscope").as_posix()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.lstrip()
            if line != stripped and stripped.startswith(("import keyscope", "from keyscope")):
                if relative not in allowed:
                    offenders.append(f"{relative}:{number}: {stripped}")
    assert not offenders, "\n".join(offenders)
