"""requirements.lock agrees with pyproject.toml and with the installed environment, offline:
every requirement is pinned at a version it accepts, the pins are closed under the dependencies
the installed packages declare, nothing is pinned that nothing needs, and .venv holds the pins."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
REGENERATE = (
    "requirements.lock is out of step with pyproject.toml: run ./scripts/lock.sh, then "
    "./scripts/install.sh, and commit requirements.lock"
)
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def locked_pins() -> dict[str, Version]:
    """The lock's pins that apply to this interpreter and platform (its markers evaluated)."""
    pins: dict[str, Version] = {}
    for line in LOCK.read_text().splitlines():
        match = PIN.match(line)
        if not match:
            continue
        name, version, marker = match.groups()
        if marker is None or Marker(marker).evaluate():
            pins[canonicalize_name(name)] = Version(version)
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    return [Requirement(r) for r in declared]


def applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras | {""})


def needed_closure(pins: dict[str, Version]) -> tuple[set[str], list[str]]:
    """Walks from pyproject's requirements through the installed packages' own requirements:
    what is needed, and every requirement the lock leaves unpinned or pins outside its range."""
    problems: list[str] = []
    needed: set[str] = set()
    queue = [(r, "pyproject.toml") for r in project_requirements() if applies(r, set())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while queue:
        requirement, wanted_by = queue.pop()
        name = canonicalize_name(requirement.name)
        pinned = pins.get(name)
        if pinned is None:
            problems.append(f"{requirement} (needed by {wanted_by}) is not pinned")
            continue
        if not requirement.specifier.contains(pinned, prereleases=True):
            problems.append(f"{requirement} (needed by {wanted_by}) but the lock pins {pinned}")
        needed.add(name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        for declared in metadata.distribution(name).requires or []:
            inner = Requirement(declared)
            if applies(inner, set(requirement.extras)):
                queue.append((inner, name))
    return needed, problems


def test_the_lock_pins_every_requirement_at_a_version_it_accepts() -> None:
    pins = locked_pins()
    _needed, problems = needed_closure(pins)
    assert not problems, REGENERATE + ":\n  " + "\n  ".join(sorted(set(problems)))


def test_the_lock_pins_nothing_that_nothing_needs() -> None:
    pins = locked_pins()
    needed, _problems = needed_closure(pins)
    extra = sorted(set(pins) - needed)
    assert not extra, f"{REGENERATE} (pinned but needed by nothing: {', '.join(extra)})"


def test_the_environment_is_the_lock() -> None:
    """The tests run on exactly the locked versions (./scripts/install.sh installs them)."""
    differ = []
    for name, pinned in locked_pins().items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            differ.append(f"{name}: not installed, the lock pins {pinned}")
            continue
        if installed != pinned:
            differ.append(f"{name}: {installed} installed, the lock pins {pinned}")
    assert not differ, "run ./scripts/install.sh (.venv is not the lock):\n  " + "\n  ".join(differ)


def test_the_lock_says_how_it_is_made_and_carries_hashes() -> None:
    text = LOCK.read_text()
    assert text.splitlines()[1].strip() == "#    ./scripts/lock.sh"
    pinned = sum(1 for line in text.splitlines() if PIN.match(line))
    hashed = len(re.findall(r"^\S+==\S+(?: ;[^\n]*)? \\\n    --hash=sha256:", text, re.MULTILINE))
    assert pinned > 50 and hashed == pinned
