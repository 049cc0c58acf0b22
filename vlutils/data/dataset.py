"""``PreparedDataset``: the samples of a prepared folder, as ``build_sample`` returned them.

Items are read one Parquet row group at a time (about 1 MiB of media, see :mod:`vlutils.data.shards`), the
stored uint8 media are patchified again, and the result is bit-identical to building the
sample from the raw record. ``sizes`` (a :class:`~vlutils.train.SizeTable`) come from two small
columns, without touching pixels, for ``vlutils.train.pack`` and budget samplers; ``sources``
gives each sample's source number (spec order; names in ``source_names``) and ``source_weights``
the manifest's weight of each source, for ``BudgetBatchSampler(sources=..., weights=...)``.
Safe in DataLoader workers (fork or spawn): files are opened lazily per process.

The folder may be local, a ``file://`` URI or an ``s3://`` URI (:mod:`vlutils.storage`, with the
same ``storage_options`` / AWS variables as ``prepare``). Remote shards are fetched whole, on first
use, into a bounded local cache shared by every process on the node (:mod:`vlutils.data.shard_cache`);
the manifest and the size columns are read remotely with ranged reads, without fetching pixels.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

import numpy as np
import torch.utils.data

from ..errors import InvalidSpecError
from ..train.sizes import SizeTable
from . import shards
from .rows import decode_row
from .shard_cache import ShardCache, check_limit, default_cache_dir

__all__ = ["PreparedDataset"]

SIZE_COLUMNS = ["source", "index", "num_tokens", "num_patches"]
# open shard files per process; remote ones are few so that an evicted shard's space returns soon
MAX_OPEN_LOCAL, MAX_OPEN_REMOTE = 8, 2


class PreparedDataset(torch.utils.data.Dataset):
    """Samples of a folder written by ``python -m vlutils prepare`` (or :func:`vlutils.data.prepare`)."""

    def __init__(
        self,
        location: str,
        *,
        cache_dir: str | None = None,
        cache_limit_bytes: int | None = None,
        storage_options: Mapping[str, str] | None = None,
    ):
        """``location``: a folder written by ``prepare`` (local path, ``file://`` or ``s3://``).

        Remote folders only: ``cache_dir`` (default :func:`~vlutils.data.shard_cache.default_cache_dir`)
        holds fetched shards, at most ``cache_limit_bytes`` in all (None: unbounded; the limit
        covers the whole directory, shared by every dataset and process using it).
        ``storage_options``: endpoint and credentials (see :mod:`vlutils.storage`).
        """
        import pyarrow.parquet as pq

        from .. import storage
        from .build import vision_preset

        check_limit(cache_limit_bytes)  # also for a local folder, where it is not used
        self.location = self.path = location
        self.storage_options = dict(storage_options or {})
        self.remote = storage.is_remote(location)
        manifest_location = storage.join(location, shards.MANIFEST)
        try:
            raw = storage.read_bytes(manifest_location, storage_options=self.storage_options)
        except storage.StorageNotFoundError:
            raise InvalidSpecError(f"{location}: no {shards.MANIFEST} (not prepared, or the job has not finished)") from None
        self.manifest = json.loads(raw)
        self.preset = vision_preset(self.manifest["model_type"], self.manifest["spec"].get("options") or {})
        self.files = [storage.join(location, s["file"]) for s in self.manifest["shards"]]
        self.cache_dir, self.cache_limit_bytes = None, cache_limit_bytes
        if self.remote:
            self.cache_dir = cache_dir or default_cache_dir()
            ShardCache(self.cache_dir, cache_limit_bytes)  # checks the limit and creates the folder now
            # shards of another dataset (or a rewritten one) at the same names never collide
            self._cache_prefix = hashlib.sha256(location.encode() + b"\0" + raw).hexdigest()[:16]
        fs_paths = [storage.resolve(f, storage_options=self.storage_options) for f in self.files]

        def size_columns(location: str, fs_path: tuple) -> tuple[int, Any]:
            fs, path = fs_path
            try:  # the footer and four small columns (ranged reads on S3), never the pixels
                return fs.get_file_info(path).size, pq.read_table(path, columns=SIZE_COLUMNS, filesystem=fs)
            except OSError as exc:
                raise storage.StorageError(f"cannot read the shard's size columns ({exc})", location) from None

        with ThreadPoolExecutor(max_workers=8 if self.remote else 1) as pool:
            results = list(pool.map(size_columns, self.files, fs_paths))
        self._file_sizes = [size for size, _ in results]
        tables = [table for _, table in results]
        self._starts, total = [], 0
        sources, indices, tokens, patches = [], [], [], []
        for table in tables:
            self._starts.append(total)
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
        self._shard_cache: ShardCache | None = None

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

        reader = self._readers.pop(shard, None)
        if reader is None:
            if len(self._readers) >= (MAX_OPEN_REMOTE if self.remote else MAX_OPEN_LOCAL):
                oldest = next(iter(self._readers))  # least recently used: dicts keep insertion order
                self._readers.pop(oldest).close(force=True)  # also the file we opened for it
            reader = pq.ParquetFile(self._open_shard(shard))
        self._readers[shard] = reader  # (re)inserted last: most recently used
        return reader

    def _open_shard(self, shard: int):
        """A seekable file of shard ``shard``: local, or from the node's cache (fetched if missing)."""
        from .. import storage

        if not self.remote:
            return storage.open_input(self.files[shard], storage_options=self.storage_options)
        if self._shard_cache is None:
            self._shard_cache = ShardCache(self.cache_dir, self.cache_limit_bytes)
        location = self.files[shard]
        name = self.manifest["shards"][shard]["file"].replace("/", "_")

        def fetch(out) -> None:
            with storage.open_input(location, storage_options=self.storage_options) as source:
                while chunk := source.read(8 << 20):
                    out.write(chunk)

        import pyarrow

        return self._shard_cache.open(f"{self._cache_prefix}-{name}", self._file_sizes[shard], fetch,
                                      opener=pyarrow.OSFile)  # native reads, as for local shards

    def __getstate__(self) -> dict:  # spawn workers reopen files themselves
        state = dict(self.__dict__)
        state["_readers"], state["_cache"], state["_shard_cache"] = {}, None, None
        return state
