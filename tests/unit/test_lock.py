"""The lock files under deploy/requirements/ against pyproject.toml.

A lock is stale when pyproject.toml asks for something it does not pin (a new dependency, a raised
floor) or when it pins something nothing asks for any more (a dropped dependency and what only it
pulled in). Either way `make lock` fixes it; these tests say which package is out of step.
"""

from __future__ import annotations

import re
import tomllib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "deploy" / "requirements"
# Where uv's `# via` names pyproject.toml as the reason for a pin.
PROJECT_ROOT = "moderator (pyproject.toml)"
# The platform every lock must serve: the Makefile's python3.11 on Linux x86_64.
TARGET = {
    "python_version": "3.11",
    "python_full_version": "3.11.7",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
# Lock file → the extras of pyproject.toml it covers on top of the runtime dependencies.
EXTRAS = {"dev.txt": ("export", "bench", "dev"), "runtime.txt": (), "gpu.txt": ("gpu",)}


@dataclass
class Lock:
    """Pins (name → versions, one per marker fork) and uv's `# via` parents of each pin."""

    pins: dict[str, list[tuple[Version, Marker | None]]] = field(default_factory=dict)
    via: dict[str, set[str]] = field(default_factory=dict)
    unhashed: set[str] = field(default_factory=set)


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def parse_lock(text: str) -> Lock:
    """Read a `uv pip compile` output with hashes and the default `# via` annotations."""
    lock = Lock()
    current: str | None = None
    in_via = False
    for line in text.splitlines():
        stripped = line.strip()
        if match := _PIN.match(line):
            current = canonicalize_name(match[1])
            marker = Marker(match[3]) if match[3] else None
            lock.pins.setdefault(current, []).append((Version(match[2]), marker))
            lock.via.setdefault(current, set())
            lock.unhashed.add(current)
            in_via = False
        elif current is None:
            continue
        elif stripped.startswith("--hash="):
            lock.unhashed.discard(current)
        elif stripped == "# via":
            in_via = True
        elif stripped.startswith("# via "):
            lock.via[current].add(stripped.removeprefix("# via ").strip())
            in_via = False
        elif in_via and stripped.startswith("#   "):
            lock.via[current].add(stripped.removeprefix("#   ").strip())
        else:
            in_via = False
    return lock


def _pyproject() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def required(pyproject: dict[str, Any], extras: tuple[str, ...]) -> list[Requirement]:
    """The runtime dependencies and the named extras' ones that apply on the target platform."""
    project = pyproject["project"]
    groups = [("", project["dependencies"])]
    groups += [(extra, project["optional-dependencies"][extra]) for extra in extras]
    out = []
    for extra, specs in groups:
        for spec in specs:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({**TARGET, "extra": extra}):
                out.append(req)
    return out


def stale(
    lock: Lock, requirements: list[Requirement], root: str | None = PROJECT_ROOT
) -> list[str]:
    """What makes `lock` stale against `requirements`, one line per package; empty when fresh.

    `root` is the `# via` entry that marks a direct requirement (None: the lock was compiled from
    an unnamed input, so the requirements themselves are the roots).
    """
    problems = []
    direct = {canonicalize_name(req.name) for req in requirements}
    for req in requirements:
        name = canonicalize_name(req.name)
        if name not in lock.pins:
            problems.append(f"{name}: pyproject.toml requires {req} but the lock pins no version")
            continue
        for version, _ in lock.pins[name]:
            if not req.specifier.contains(version, prereleases=True):
                problems.append(f"{name}: the lock pins {version}, pyproject.toml requires {req}")
    claimed = {name for name, parents in lock.via.items() if root is not None and root in parents}
    for name in sorted(claimed - direct):
        problems.append(f"{name}: in the lock for pyproject.toml, which no longer asks for it")
    # What the requirements pull in, following uv's `# via` edges from parent to child.
    children: dict[str, set[str]] = {}
    for name, parents in lock.via.items():
        for parent in parents:
            children.setdefault(canonicalize_name(re.split(r"[\s\[]", parent)[0]), set()).add(name)
    reachable = set(direct & lock.pins.keys())
    queue = deque(reachable)
    while queue:
        for child in children.get(queue.popleft(), ()):
            if child not in reachable:
                reachable.add(child)
                queue.append(child)
    for name in sorted(lock.pins.keys() - reachable - claimed):
        problems.append(f"{name}: in the lock, but nothing pyproject.toml requires needs it")
    return problems


@pytest.fixture(scope="module")
def locks() -> dict[str, Lock]:
    return {path.name: parse_lock(path.read_text(encoding="utf-8")) for path in LOCKS.glob("*.txt")}


@pytest.mark.parametrize("name", sorted(EXTRAS))
def test_lock_is_fresh_against_pyproject(name: str, locks: dict[str, Lock]) -> None:
    problems = stale(locks[name], required(_pyproject(), EXTRAS[name]))
    assert not problems, f"{name} is stale; run `make lock`:\n" + "\n".join(problems)


def test_build_lock_covers_the_build_backend_and_pip(locks: dict[str, Lock]) -> None:
    wanted = [Requirement(s) for s in ["pip", *_pyproject()["build-system"]["requires"]]]
    problems = stale(locks["build.txt"], wanted, root=None)
    assert not problems, "build.txt is stale; run `make lock`:\n" + "\n".join(problems)
    # project.license as an SPDX string needs setuptools 77 or later.
    assert all(v >= Version("77") for v, _ in locks["build.txt"].pins["setuptools"])


def test_every_pin_has_hashes_and_one_version_on_the_target(locks: dict[str, Lock]) -> None:
    assert set(locks) == {*EXTRAS, "build.txt"}
    for name, lock in locks.items():
        assert lock.pins, name
        for package, pins in lock.pins.items():
            assert package not in lock.unhashed, f"{name}: {package} has no hashes"
            on_target = [v for v, m in pins if m is None or m.evaluate(TARGET)]
            assert len(on_target) <= 1, f"{name}: {package} pinned twice for Linux 3.11"


def test_shared_packages_have_one_version_across_locks(locks: dict[str, Lock]) -> None:
    """`make install` marks the runtime install done too: both locks must agree."""
    versions: dict[str, dict[str, set[Version]]] = {}
    for name, lock in locks.items():
        for package, pins in lock.pins.items():
            versions.setdefault(package, {})[name] = {v for v, _ in pins}
    for package, by_lock in versions.items():
        if "dev.txt" in by_lock:
            for name, found in by_lock.items():
                assert found <= by_lock["dev.txt"], f"{package}: {name} {found} vs dev.txt"


def test_installs_read_the_locks_with_hashes() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    assert "--require-hashes" in makefile
    assert "--require-hashes" in dockerfile
    for name in ("dev.txt", "runtime.txt", "build.txt"):
        assert f"$(LOCKS)/{name}" in makefile, name
    for name in ("gpu.txt", "build.txt"):
        assert f"deploy/requirements/{name}" in dockerfile, name


# A lock as uv writes it, for the tests of the staleness check itself.
FIXTURE = """\
# This file was autogenerated by uv via the following command:
#    make lock
anyio==4.16.0 \\
    --hash=sha256:00
    # via httpx
certifi==2026.10.19.post1 \\
    --hash=sha256:01
    # via
    #   -c deploy/requirements/dev.txt
    #   httpx
httpx==0.29.0 \\
    --hash=sha256:02
    # via moderator (pyproject.toml)
numpy==2.4.6 ; python_full_version < '3.12' \\
    --hash=sha256:03
    # via moderator (pyproject.toml)
numpy==2.5.5 ; python_full_version >= '3.12' \\
    --hash=sha256:04
    # via moderator (pyproject.toml)
"""


def _fixture_pyproject(*deps: str) -> dict[str, Any]:
    return {"project": {"dependencies": list(deps), "optional-dependencies": {}}}


def test_parse_reads_pins_forks_and_via() -> None:
    lock = parse_lock(FIXTURE)
    assert set(lock.pins) == {"anyio", "certifi", "httpx", "numpy"}
    assert [str(v) for v, _ in lock.pins["numpy"]] == ["2.4.6", "2.5.5"]
    assert lock.via["certifi"] == {"-c deploy/requirements/dev.txt", "httpx"}
    assert lock.via["httpx"] == {PROJECT_ROOT}
    assert not lock.unhashed


def test_fixture_is_fresh_against_its_requirements() -> None:
    reqs = required(_fixture_pyproject("httpx>=0.27", "numpy>=1.26"), ())
    assert stale(parse_lock(FIXTURE), reqs) == []


def test_a_raised_floor_makes_the_lock_stale() -> None:
    reqs = required(_fixture_pyproject("httpx>=0.30", "numpy>=1.26"), ())
    (problem,) = stale(parse_lock(FIXTURE), reqs)
    assert problem.startswith("httpx: the lock pins 0.29.0")
    assert "httpx>=0.30" in problem


def test_one_fork_outside_the_range_makes_the_lock_stale() -> None:
    reqs = required(_fixture_pyproject("httpx>=0.27", "numpy<2.5"), ())
    assert stale(parse_lock(FIXTURE), reqs) == [
        "numpy: the lock pins 2.5.5, pyproject.toml requires numpy<2.5"
    ]


def test_a_new_dependency_makes_the_lock_stale() -> None:
    reqs = required(_fixture_pyproject("httpx>=0.27", "numpy>=1.26", "redis>=5.0"), ())
    assert stale(parse_lock(FIXTURE), reqs) == [
        "redis: pyproject.toml requires redis>=5.0 but the lock pins no version"
    ]


def test_a_dropped_dependency_and_what_it_pulled_in_are_leftovers() -> None:
    problems = stale(parse_lock(FIXTURE), required(_fixture_pyproject("numpy>=1.26"), ()))
    assert problems == [
        "httpx: in the lock for pyproject.toml, which no longer asks for it",
        "anyio: in the lock, but nothing pyproject.toml requires needs it",
        "certifi: in the lock, but nothing pyproject.toml requires needs it",
    ]


def test_markers_select_the_requirements_of_the_covered_extras() -> None:
    pyproject = {
        "project": {
            "dependencies": ["httpx>=0.27", "pywin32>=300; sys_platform == 'win32'"],
            "optional-dependencies": {"gpu": ["numpy>=1.26"], "other": ["redis>=5"]},
        }
    }
    assert [r.name for r in required(pyproject, ("gpu",))] == ["httpx", "numpy"]
    assert stale(parse_lock(FIXTURE), required(pyproject, ("gpu",))) == []


def test_a_pin_without_hashes_is_seen() -> None:
    lock = parse_lock("httpx==0.29.0\n    # via moderator (pyproject.toml)\n")
    assert lock.unhashed == {"httpx"}
