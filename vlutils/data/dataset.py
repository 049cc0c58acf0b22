"""``PreparedDataset``: the samples of a prepared folder, as ``build_sample`` returned them.

Items are read one Parquet row group at a time (about 1 MiB of media, see :mod:`vlutils.data.shards`), the
stored uint8 media are patchified again, and the result is bit-identical to building the
sample from the raw record. ``sizes`` (a :class:`~vlutils.train.SizeTable`) come from two small
columns, without touching pixels, for ``vlutils.train.pack`` and budget samplers; ``sources``
gives each sample's source number (spec order; names in ``source_names``) and ``source_weights``
the manifest's weight of each source, for ``BudgetBatchSampler(sources=..., weights=...)``.
Safe in DataLoader workers (fork or spawn): files are opened lazily per process.
"""

from __future__ import annotations

import bisect
import json
import os
from typing import Any

import numpy as np
import torch.utils.data

from ..errors import InvalidSpecError
from ..train.sizes import SizeTable
from . import shards
from .rows import decode_row

__all__ = ["PreparedDataset"]


class PreparedDataset(torch.utils.data.Dataset):
    """Samples of a folder written by ``python -m vlutils prepare`` (or :func:`vlutils.data.prepare`)."""

    def __init__(self, path: str):
        import pyarrow.parquet as pq

        from .build import vision_preset

        self.path = path
        manifest_path = os.path.join(path, shards.MANIFEST)
        if not os.path.exists(manifest_path):
            raise InvalidSpecError(f"{path}: no {shards.MANIFEST} (not prepared, or the job has not finished)")
        with open(manifest_path, encoding="utf-8") as handle:
            self.manifest = json.load(handle)
        self.preset = vision_preset(self.manifest["model_type"], self.manifest["spec"].get("options") or {})
        self.files = [os.path.join(path, s["file"]) for s in self.manifest["shards"]]
        self._starts, total = [], 0
        sources, indices, tokens, patches = [], [], [], []
        for file in self.files:
            self._starts.append(total)
            table = pq.read_table(file, columns=["source", "index", "num_tokens", "num_patches"])
            total += table.num_rows
            sources += table.column("source").to_pylist()
            indices += table.column("index").to_pylist()
            tokens += table.column("num_tokens").to_pylist()
            patches += table.column("num_patches").to_pylist()
        self._length = total
        spec_sources = self.manifest["spec"].get("sources") or []
        self.source_names: list[str] = [s["name"] for s in spec_sources]
        self.source_weights: list[float] = [float(s.get("weight", 1.0)) for s in spec_sources]
        number = {name: i for i, name in enumerate(self.source_names)}
        for name in sorted(set(sources) - set(number)):  # not in the spec (should not happen): numbered after
            number[name] = len(self.source_names)
            self.source_names.append(name)
            self.source_weights.append(1.0)
        self._sources = np.array([number[name] for name in sources], dtype=np.int64)
        self._sources.setflags(write=False)
        self.indices = indices
        self._sizes = SizeTable(np.column_stack([np.asarray(tokens, dtype=np.int64),
                                                 np.asarray(patches, dtype=np.int64)]))
        self._cache: tuple[int, int, Any] | None = None
        self._readers: dict[int, Any] = {}
        self._groups: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return self._length

    @property
    def sizes(self) -> SizeTable:
        """``(num_tokens, num_patches)`` of every sample (``sizes[i]`` is a tuple; ``np.asarray`` gives
        the ``(N, 2)`` array without a copy)."""
        return self._sizes

    @property
    def sources(self) -> np.ndarray:
        """The source number of every sample (int64; the name is ``source_names[sources[i]]``)."""
        return self._sources

    def __getitem__(self, i: int) -> dict:
        return decode_row(self._row(i), self.preset)

    def _row(self, i: int) -> dict:
        if i < 0:
            i += self._length
        if not 0 <= i < self._length:
            raise IndexError(f"index {i} out of range for {self._length} samples")
        shard = bisect.bisect_right(self._starts, i) - 1
        offset = i - self._starts[shard]
        groups = self._group_starts(shard)
        group = bisect.bisect_right(groups, offset) - 1
        within = offset - groups[group]
        if self._cache is None or self._cache[:2] != (shard, group):
            self._cache = (shard, group, self._reader(shard).read_row_group(group))
        return self._cache[2].slice(within, 1).to_pylist()[0]

    def _group_starts(self, shard: int) -> list[int]:
        starts = self._groups.get(shard)
        if starts is None:
            metadata = self._reader(shard).metadata
            starts, total = [], 0
            for g in range(metadata.num_row_groups):
                starts.append(total)
                total += metadata.row_group(g).num_rows
            self._groups[shard] = starts
        return starts

    def _reader(self, shard: int):
        import pyarrow.parquet as pq

        reader = self._readers.get(shard)
        if reader is None:
            if len(self._readers) > 8:
                self._readers.clear()
            reader = self._readers[shard] = pq.ParquetFile(self.files[shard])
        return reader

    def __getstate__(self) -> dict:  # spawn workers reopen files themselves
        state = dict(self.__dict__)
        state["_readers"], state["_cache"] = {}, None
        return state
