"""npm packages the tests need (for example the element-templates JSON Schema), installed once into
the stack's cache directory, never into the repository.

``PROCOS_STACK_HOME`` (default ``~/.cache/procos-stack``) is the same cache ``scripts/stack`` uses.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["npm_package"]


def npm_package(name: str, version: str) -> Path:
    """The directory of ``name@version`` (``npm install`` into the cache on first use)."""
    home = Path(os.environ.get("PROCOS_STACK_HOME") or Path.home() / ".cache" / "procos-stack")
    prefix = home / "npm" / f"{name.replace('/', '+')}@{version}"
    package = prefix / "node_modules" / name
    prefix.mkdir(parents=True, exist_ok=True)
    with (prefix / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test sessions may start at once
        if _installed_version(package) != version:
            npm = shutil.which("npm")
            if npm is None:
                raise RuntimeError(f"npm is needed to fetch {name}@{version} (Debian package npm)")
            result = subprocess.run(
                [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--ignore-scripts",
                 f"{name}@{version}"],
                capture_output=True, text=True, timeout=600, check=False)
            if result.returncode != 0 or _installed_version(package) != version:
                raise RuntimeError(f"npm install {name}@{version} failed: {result.stderr.strip()[-2000:]}")
    return package


def _installed_version(package: Path) -> str | None:
    try:
        return str(json.loads((package / "package.json").read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError):
        return None
