"""The README's configuration table and .env.example must not drift from Settings."""

from __future__ import annotations

import re
from pathlib import Path

from procos_worker.settings import env_var_names

ROOT = Path(__file__).resolve().parents[2]


def test_readme_configuration_table_names_every_setting() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", section))
    assert env_var_names() <= documented, sorted(env_var_names() - documented)


def test_readme_keeps_its_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "scripts/demo" in readme and "scripts/test" in readme
    for script in ("scripts/demo", "scripts/test", "scripts/stack", ".ci/run"):
        assert (ROOT / script).is_file(), script
