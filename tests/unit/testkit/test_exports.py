"""The test kit's lazy names resolve, and each of its modules says what it exports."""

from __future__ import annotations

import importlib
import pkgutil

import procos_testkit


def test_every_exported_name_resolves() -> None:
    for name in procos_testkit.__all__:
        assert getattr(procos_testkit, name) is not None, name


def test_every_module_declares_all() -> None:
    for module in pkgutil.iter_modules(procos_testkit.__path__, "procos_testkit."):
        assert hasattr(importlib.import_module(module.name), "__all__"), module.name
