"""Scratch PostgreSQL databases for tests that must not touch the shared ``procos`` database
(schema migrations, table locks): created by the cluster's superuser, owned by the ``procos`` role.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

__all__ = ["as_superuser", "scratch_database"]


def as_superuser(sql: str, database: str = "postgres") -> str:
    """Run ``sql`` with psql as the ``postgres`` OS user (root: runuser; otherwise sudo -n)."""
    runner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else ["sudo", "-n", "-u", "postgres"]
    result = subprocess.run([*runner, "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql],
                            capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"psql as postgres failed: {result.stderr.strip()}")
    return result.stdout


@contextmanager
def scratch_database(base_url: str, prefix: str = "procos_test") -> Iterator[str]:
    """A new empty database owned by the role of ``base_url``; yields its URL, drops it afterwards."""
    parts = urlsplit(base_url)
    owner = parts.username or "procos"
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    as_superuser(f'CREATE DATABASE "{name}" OWNER "{owner}"')
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        as_superuser(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
