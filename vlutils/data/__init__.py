"""Dataset preparation at scale: specs and mixtures, Parquet shards, ``PreparedDataset``.

``python -m vlutils prepare SPEC --out DIR --tokenizer TOKENIZER --model-type TYPE`` (see
:mod:`vlutils.data.cli`), or in code :func:`prepare`. pyarrow (and Ray for ``engine="ray"``)
are optional extras: ``pip install "qwenvl-kit[data,ray]"`` (from a checkout:
``pip install -e ".[data,ray]"``). Names are loaded lazily.
"""

from __future__ import annotations

import sys
import types

_LAZY = {
    "PreparedDataset": "dataset",
    "prepare": "prepare",
    "load_spec": "spec",
    "DatasetSpec": "spec",
    "SourceSpec": "spec",
    "parse_record": "records",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vlutils.data' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """``vlutils.data.prepare`` is both a function (exported here) and the submodule defining it.
    Importing the submodule (``from vlutils.data.prepare import resolve_spec``) makes Python set
    the package attribute ``prepare`` to the submodule, after which ``from vlutils.data import
    prepare`` would return a module. This keeps the function under that name."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
