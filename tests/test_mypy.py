"""`mypy` from the project's configuration alone: no target on the command line, zero errors."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IGNORED_DIRS = {"data", "build", "dist", "node_modules"}  # and hidden ones (.venv)


def configured_files() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    files: list[str] = config["tool"]["mypy"]["files"]
    return files


def test_mypy_checks_every_python_directory_of_the_repo() -> None:
    """Directories, not file lists: a module another change adds is checked without an edit."""
    files = configured_files()
    assert all((ROOT / f).is_dir() for f in files), files
    with_python = {
        d.name
        for d in ROOT.iterdir()
        if d.is_dir()
        and not d.name.startswith(".")
        and d.name not in IGNORED_DIRS
        and next(d.rglob("*.py"), None) is not None
    }
    assert with_python <= set(files)
    assert {"actors", "api", "ws", "chatdf", "tests"} <= set(files)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mypy_passes_from_the_configuration_alone() -> None:
    """What `.venv/bin/mypy` (no arguments) does: strict, tests included (40 s on a cold cache
    on 2 cores, a few seconds warm)."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=580
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout
