"""Run the ``procos-worker`` command as a subprocess, the way an operator does, with a chosen environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["run_cli"]


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout_s: float = 300.0) -> subprocess.CompletedProcess[bytes]:
    """``python -m procos_worker ARGS`` in ``cwd`` (no .env there) with only PATH, HOME, JSON logs and ``env``.

    Output stays bytes: commands that print stored text must be compared byte for byte.
    """
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8", "LOG_FORMAT": "json"}
    return subprocess.run([sys.executable, "-m", "procos_worker", *args], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, timeout=timeout_s, check=False)
