"""The wheel the Dockerfile builds: console script and the bundled schema file."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.deploy.deploykit import INIT_SQL, REPO

pytestmark = pytest.mark.deploy


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list(out.glob("procos_worker-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _dist_info_file(archive: zipfile.ZipFile, name: str) -> str:
    matches = [n for n in archive.namelist() if n.endswith(f".dist-info/{name}")]
    assert len(matches) == 1, matches
    return archive.read(matches[0]).decode("utf-8")


def test_wheel_declares_the_console_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        parser = configparser.ConfigParser()
        parser.read_string(_dist_info_file(archive, "entry_points.txt"))
        assert parser["console_scripts"]["procos-worker"].strip() == "procos_worker.ops.cli:main"
        names = set(archive.namelist())
    assert "procos_worker/ops/cli.py" in names
    assert "procos_worker/settings.py" in names


def test_wheel_carries_the_schema_file_init_db_applies(wheel: Path) -> None:
    """The image has no source tree: `procos-worker init-db` applies the copy inside the package,
    which must be the very file PostgreSQL's init script (sql/init-db.sql) is."""
    with zipfile.ZipFile(wheel) as archive:
        bundled = archive.read("procos_worker/store/sql/init-db.sql")
    assert bundled == INIT_SQL.read_bytes()


def test_the_cli_knows_the_commands_the_image_uses() -> None:
    for command in ("run", "health", "init-db", "check"):
        result = subprocess.run(
            [sys.executable, "-m", "procos_worker", command, "--help"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, f"{command}: {result.stderr}"
        assert "usage: procos-worker" in result.stdout
