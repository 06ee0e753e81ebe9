"""requirements.lock and requirements-build.lock (made by scripts/lock) match pyproject.toml: every
runtime dependency (and build requirement) is pinned to a version its range allows, every pin is hashed,
and the Dockerfile installs from them with --require-hashes before it copies the source."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.deploykit import DOCKERFILE, REPO

pytestmark = pytest.mark.deploy

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(;[^\\]*)?\\?$")
_HASH = re.compile(r"^--hash=sha256:[0-9a-f]{64}\s*\\?$")


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    hashes: int


def read_lock(path: Path) -> dict[str, Pin]:
    """name -> pin of a pip-style hashed requirements file (``name==version \\`` then ``--hash=...`` lines)."""
    pins: dict[str, Pin] = {}
    current: tuple[str, Version] | None = None
    hashes = 0
    for raw in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        line = raw.strip()
        if (not line or line.startswith("#") or _PIN.match(line)) and current is not None:
            pins[current[0]] = Pin(current[0], current[1], hashes)
            current, hashes = None, 0
        if not line or line.startswith("#"):
            continue
        match = _PIN.match(line)
        if match:
            current = (str(canonicalize_name(match.group(1))), Version(match.group(2)))
            continue
        assert _HASH.match(line), f"{path.name}: unexpected line {raw!r}"
        hashes += 1
    return pins


@pytest.fixture(scope="module")
def runtime_lock() -> dict[str, Pin]:
    return read_lock(REPO / "requirements.lock")


@pytest.mark.parametrize("spec", PYPROJECT["project"]["dependencies"])
def test_every_runtime_dependency_is_pinned_within_its_range(runtime_lock: dict[str, Pin], spec: str) -> None:
    requirement = Requirement(spec)
    pin = runtime_lock.get(str(canonicalize_name(requirement.name)))
    assert pin is not None, f"{requirement.name} missing from requirements.lock: run scripts/lock"
    assert requirement.specifier.contains(pin.version, prereleases=True), (
        f"requirements.lock pins {pin.name}=={pin.version}, outside pyproject's {spec!r}: run scripts/lock")


def test_extras_of_runtime_dependencies_are_locked_too(runtime_lock: dict[str, Pin]) -> None:
    # psycopg[binary] means psycopg-binary; without it the image would need libpq at run time.
    assert "psycopg-binary" in runtime_lock
    assert runtime_lock["psycopg-binary"].version == runtime_lock["psycopg"].version


def test_every_pin_is_hashed_and_nothing_is_left_open(runtime_lock: dict[str, Pin]) -> None:
    assert len(runtime_lock) >= len(PYPROJECT["project"]["dependencies"])
    assert [p.name for p in runtime_lock.values() if p.hashes == 0] == []
    # Only runtime dependencies: nothing of the dev extras (pytest, ruff...) in the image's lock.
    dev = {str(canonicalize_name(Requirement(s).name)) for s in PYPROJECT["project"]["optional-dependencies"]["dev"]}
    runtime = {str(canonicalize_name(Requirement(s).name)) for s in PYPROJECT["project"]["dependencies"]}
    assert (dev - runtime) & set(runtime_lock) == set()


def test_build_backend_is_locked_and_supports_the_spdx_license() -> None:
    build = read_lock(REPO / "requirements-build.lock")
    for spec in PYPROJECT["build-system"]["requires"]:
        requirement = Requirement(spec)
        pin = build.get(str(canonicalize_name(requirement.name)))
        assert pin is not None and pin.hashes > 0, f"{requirement.name} not locked: run scripts/lock"
        assert requirement.specifier.contains(pin.version)
    # `license = "<SPDX expression>"` (PEP 639) needs setuptools 77 or later.
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert Requirement(PYPROJECT["build-system"]["requires"][0]).specifier.contains("77.0.0")
    assert not Requirement(PYPROJECT["build-system"]["requires"][0]).specifier.contains("76.1.0")


def test_dockerfile_installs_the_locks_with_hashes_before_the_source() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    lock_copy = text.index("COPY requirements.lock requirements-build.lock")
    install = text.index("--require-hashes --only-binary :all: --no-deps -r requirements.lock")
    source_copy = text.index("COPY procos_worker/")
    assert lock_copy < install < source_copy, "the dependency layer must come before the source"
    assert "COPY . ." not in text
    assert "--no-build-isolation" in text, "the worker's wheel is built with the locked setuptools only"
