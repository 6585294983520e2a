"""Lazy package exports: public names that live in submodules, imported on first use, so that importing a package
(`fg_edge.sources`, `fg_edge.inspect`, `fg_edge.exporters`) stays cheap and never pulls torch by itself."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that imports `package.<exports[name]>` when `name` is first used."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(f".{exports[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
