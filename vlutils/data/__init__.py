"""Dataset preparation at scale: specs and mixtures, Parquet shards, ``PreparedDataset``.

``python -m vlutils prepare SPEC --out DIR --tokenizer TOKENIZER --model-type TYPE`` (see
:mod:`vlutils.data.cli`), or in code :func:`prepare`. pyarrow (and Ray for ``engine="ray"``)
are optional extras: ``pip install "qwenvl-kit[data,ray]"`` (from a checkout:
``pip install -e ".[data,ray]"``). Names are loaded lazily.
"""

from __future__ import annotations

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
