"""The wheel the Dockerfile builds: console script, the bundled schema file, and nothing but the
runtime: installed into a clean venv (its dependencies from the package index), every module of
procos_worker imports there, and the test doubles and benchmarks are not in it."""

from __future__ import annotations

import configparser
import json
import os
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


# -- the runtime alone, in a clean venv ----------------------------------------------------------------

# Run by the clean venv's interpreter, outside the checkout: imports every module the wheel carries.
_IMPORT_ALL = """
import importlib, importlib.util, json, sys
names = json.loads(sys.argv[1])
for name in names:
    importlib.import_module(name)
import procos_worker
print(json.dumps({"imported": len(names), "file": procos_worker.__file__,
                  "absent": [m for m in ("procos_testkit", "procos_bench") if importlib.util.find_spec(m) is None]}))
"""


def _clean_env() -> dict[str, str]:
    """This environment without anything that points Python at the checkout or at the test venv."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_"))}


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A new venv with nothing but the wheel and the dependencies it declares; its bin directory."""
    venv = tmp_path_factory.mktemp("clean") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, env=_clean_env())
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True, check=False, timeout=900, cwd=venv, env=_clean_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return venv / "bin"


def _runtime_modules(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        paths = [n for n in archive.namelist() if n.endswith(".py") and not n.endswith("__main__.py")]
    return sorted(n.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for n in paths)


def test_the_wheel_carries_only_the_runtime_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/", 1)[0] for name in archive.namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"procos_worker"}
    modules = _runtime_modules(wheel)
    assert "procos_worker.worker" in modules and "procos_worker.engine.client" in modules
    assert not [m for m in modules if m.startswith(("procos_testkit", "procos_bench", "tests"))]


def test_every_module_imports_from_the_wheel_in_a_clean_venv(clean_venv: Path, wheel: Path,
                                                            tmp_path: Path) -> None:
    modules = _runtime_modules(wheel)
    result = subprocess.run([str(clean_venv / "python"), "-c", _IMPORT_ALL, json.dumps(modules)],
                            capture_output=True, text=True, check=False, timeout=300, cwd=tmp_path,
                            env=_clean_env())
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["imported"] == len(modules) > 20
    assert Path(report["file"]).is_relative_to(clean_venv.parent), "imported from the venv, not the checkout"
    assert report["absent"] == ["procos_testkit", "procos_bench"]


def test_the_console_script_runs_in_the_clean_venv(clean_venv: Path, tmp_path: Path) -> None:
    result = subprocess.run([str(clean_venv / "procos-worker"), "--help"], capture_output=True, text=True,
                            check=False, timeout=120, cwd=tmp_path, env=_clean_env())
    assert result.returncode == 0, result.stderr
    assert "usage: procos-worker" in result.stdout
