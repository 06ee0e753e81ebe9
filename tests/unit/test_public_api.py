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


def test_public_names_resolve() -> None:
    from procos_worker.store.context import ContextStore

    assert procos_worker.ContextStore is ContextStore
    assert all(getattr(procos_worker, name) for name in procos_worker.__all__)
