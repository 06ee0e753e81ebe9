from __future__ import annotations

import importlib
import pkgutil

import procos_worker


def test_public_api_is_pinned() -> None:
    assert procos_worker.__all__ == ["ContextStore", "ProcosError", "Settings", "StoredContext", "Worker"]


def test_every_module_declares_all() -> None:
    for module in pkgutil.walk_packages(procos_worker.__path__, "procos_worker."):
        if module.name.endswith("__main__"):
            continue
        imported = importlib.import_module(module.name)
        assert hasattr(imported, "__all__"), module.name
