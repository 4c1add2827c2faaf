"""PEP 562 lazy attributes for the subpackages: ``from minivlm_hf.data import load_scenes`` imports
``minivlm_hf.data.scenes`` only, not every module of the package (and what they import: torch, datasets, ...)."""

from __future__ import annotations

import importlib
import sys
from typing import Callable


def lazy_attributes(package: str, names: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """Module ``__getattr__`` and ``__dir__`` for ``package``: public name -> submodule (relative) defining it."""

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
