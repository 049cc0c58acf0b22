"""PreparedDataset over s3:// (SeaweedFS) with a bounded local shard cache: items bit-identical
to the local folder, a cache limit smaller than the dataset, DataLoader workers (fork and spawn)
sharing one cache directory, and the cache's own guarantees under concurrent processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests._cache_worker import hammer
from tests._datasets import make_mixture, save_tokenizer

pytest.importorskip("pyarrow")

from vlutils import storage  # noqa: E402
from vlutils.data import PreparedDataset, prepare  # noqa: E402
from vlutils.data.shard_cache import LOCK, PARTIAL, CacheError, ShardCache  # noqa: E402
from vlutils.errors import InvalidSpecError  # noqa: E402


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A mixed dataset (images, videos, three formats) in 6 shards of 3 samples, locally and on S3."""
    root = tmp_path_factory.mktemp("streaming")
    spec = make_mixture(root, records=6, bad=False)
    tokenizer = save_tokenizer(root / "tokenizer.json")
    out = root / "out"
    prepare(str(spec), str(out), str(tokenizer), workers=1, shard_size=3)
    return out


@pytest.fixture(scope="module")
def remote(prepared, s3_store):
    location = s3_store.bucket("streaming") + "/datasets/mix"
    for path in sorted(prepared.iterdir()):
        if path.name == "manifest.json" or path.suffix == ".parquet":
            storage.put_file(str(path), storage.join(location, path.name), storage_options=s3_store.storage_options)
    return location, s3_store.storage_options


def _shard_sizes(folder: Path) -> list[int]:
    return sorted(p.stat().st_size for p in folder.glob("part-*.parquet"))


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == b[key].dtype and torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


def _cache_files(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name != LOCK)


def test_s3_items_bit_identical_with_a_cache_smaller_than_the_dataset(prepared, remote, tmp_path):
    location, options = remote
    local = PreparedDataset(str(prepared))
    sizes = _shard_sizes(prepared)
    limit = sizes[-1] + sizes[-2] + 1  # the two largest shards fit, the dataset (6 shards) does not
    assert limit < sum(sizes)
    ds = PreparedDataset(location, cache_dir=str(tmp_path / "cache"), cache_limit_bytes=limit, storage_options=options)
    # the manifest and the size columns came without fetching a shard
    assert _cache_files(tmp_path / "cache") == []
    assert np.array_equal(np.asarray(ds.sizes), np.asarray(local.sizes))
    assert np.array_equal(ds.sources, local.sources) and ds.source_names == local.source_names
    assert (ds.indices, len(ds)) == (local.indices, len(local))
    order = list(range(len(ds))) * 2
    random.Random(0).shuffle(order)
    for i in order:
        _same(ds[i], local[i])
        assert ShardCache(str(tmp_path / "cache")).usage() <= limit
    assert 1 <= len(_cache_files(tmp_path / "cache")) < len(sizes)  # evicted, never everything


def test_unbounded_cache_keeps_every_shard_and_a_second_reader_fetches_nothing(prepared, remote, tmp_path):
    location, options = remote
    cache = str(tmp_path / "cache")
    first = PreparedDataset(location, cache_dir=cache, storage_options=options)
    for i in range(len(first)):
        first[i]
    files = _cache_files(cache)
    assert len(files) == len(_shard_sizes(prepared)) and not any(f.endswith(PARTIAL) for f in files)
    stamps = {f: os.stat(os.path.join(cache, f)).st_ino for f in files}
    second = PreparedDataset(location, cache_dir=cache, storage_options=options)
    local = PreparedDataset(str(prepared))
    for i in range(len(second)):
        _same(second[i], local[i])
    assert {f: os.stat(os.path.join(cache, f)).st_ino for f in _cache_files(cache)} == stamps


def _watch_usage(directory: str, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        try:
            usage = sum(e.stat().st_size for e in os.scandir(directory) if e.name != LOCK)
        except FileNotFoundError:
            usage = 0
        peak[0] = max(peak[0], usage)
        time.sleep(0.005)


@pytest.mark.slow
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_share_one_bounded_cache(prepared, remote, tmp_path, context):
    location, options = remote
    sizes = _shard_sizes(prepared)
    limit = sizes[-1] + sizes[-2] + 1
    cache = str(tmp_path / "cache")
    ds = PreparedDataset(location, cache_dir=cache, cache_limit_bytes=limit, storage_options=options)
    order = list(range(len(ds)))
    random.Random(1).shuffle(order)
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=_watch_usage, args=(cache, stop, peak), daemon=True)
    watcher.start()
    loader = torch.utils.data.DataLoader(ds, sampler=order, batch_size=None, num_workers=2,
                                         multiprocessing_context=context, timeout=120)
    try:
        got = list(loader)
    finally:
        stop.set()
        watcher.join()
    local = PreparedDataset(str(prepared))
    for i, item in zip(order, got):
        _same(item, local[i])
    assert 0 < peak[0] <= limit


def test_missing_dataset_and_bad_options_are_clear_errors(remote, tmp_path):
    location, options = remote
    with pytest.raises(InvalidSpecError, match="no manifest.json"):
        PreparedDataset(location + "-nothing-here", cache_dir=str(tmp_path), storage_options=options)
    with pytest.raises(ValueError, match="cache_limit_bytes must be a positive int"):
        PreparedDataset(location, cache_dir=str(tmp_path), cache_limit_bytes=0, storage_options=options)
    with pytest.raises(storage.StorageError, match="unsupported storage scheme"):
        PreparedDataset("gs://bucket/data", cache_dir=str(tmp_path))
    start = time.monotonic()
    with pytest.raises(storage.StorageError, match="manifest.json"):
        PreparedDataset(location, cache_dir=str(tmp_path), storage_options={**options, "secret_key": "wrong"})
    assert time.monotonic() - start < 60  # refused, not retried for minutes


# -- the cache alone, with local files standing in for remote ones: many processes at once ------------


def _make_sources(folder: Path, count: int, seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    folder.mkdir()
    out = {}
    for i in range(count):
        data = rng.randbytes(rng.randrange(40_000, 120_000))
        (folder / f"s{i}").write_bytes(data)
        out[f"s{i}"] = data
    return out


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_cache_many_processes_bounded_and_correct(tmp_path, context):
    sources = _make_sources(tmp_path / "src", 8)
    largest = max(len(v) for v in sources.values())
    limit = 3 * largest
    cache_dir = str(tmp_path / "cache")
    ctx = mp.get_context(context)
    errors = ctx.Queue()
    stop, peak = threading.Event(), [0]
    os.makedirs(cache_dir)
    watcher = threading.Thread(target=_watch_usage, args=(cache_dir, stop, peak), daemon=True)
    watcher.start()
    procs = [ctx.Process(target=hammer, args=(cache_dir, limit, str(tmp_path / "src"), seed, 25, errors))
             for seed in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    stop.set()
    watcher.join()
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert not problems, problems
    assert all(p.exitcode == 0 for p in procs)
    assert 0 < peak[0] <= limit
    assert not [f for f in _cache_files(cache_dir) if f.endswith(PARTIAL)]


def test_cache_limit_smaller_than_one_shard_overshoots_by_at_most_that_shard(tmp_path):
    sources = _make_sources(tmp_path / "src", 3)
    cache = ShardCache(str(tmp_path / "cache"), limit_bytes=10)
    for name, data in sources.items():
        with cache.open(name, len(data), lambda out, d=data: out.write(d)) as handle:
            assert handle.read() == data
        assert cache.usage() == len(data)  # everything older was evicted; only this one is left


def _die_while_fetching(cache_dir: str) -> None:
    def fetch(out):
        out.write(b"x" * 10)
        out.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    ShardCache(cache_dir, 1 << 20).open("shard", 100, fetch)


def test_a_download_killed_midway_is_cleaned_up_and_refetched(tmp_path):
    cache_dir = str(tmp_path / "cache")
    proc = mp.get_context("fork").Process(target=_die_while_fetching, args=(cache_dir,))
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == -signal.SIGKILL
    assert _cache_files(cache_dir) == ["shard" + PARTIAL]  # left behind, but its lock died with it
    data = bytes(range(100))
    with ShardCache(cache_dir, 1 << 20).open("shard", 100, lambda out: out.write(data)) as handle:
        assert handle.read() == data
    assert _cache_files(cache_dir) == ["shard"]


def test_a_short_fetch_is_an_error_and_leaves_nothing(tmp_path):
    cache = ShardCache(str(tmp_path / "cache"), 1 << 20)
    with pytest.raises(CacheError, match="fetched 5 bytes, expected 100"):
        cache.open("shard", 100, lambda out: out.write(b"12345"))
    assert _cache_files(tmp_path / "cache") == []
