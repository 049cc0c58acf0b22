"""Reading a prepared dataset from S3 (SeaweedFS on loopback) through the shard cache vs from local disk.

    .venv/bin/python bench/bench_loader.py [--records 20] [--shard-size 6] [--workers 2] [--repeats 2]

One prepared mixture (tests/_datasets.py: images, videos, three formats; ``--records`` per source)
is read in one random order, the same in every run, through ``DataLoader(num_workers=--workers)``:

1. local: ``PreparedDataset(folder)``;
2. S3 cold: ``PreparedDataset("s3://...", cache_dir=<empty>)`` (every shard fetched once, on first use);
3. S3 warm: the same cache directory again (a second process/epoch on the node: nothing fetched);
4. S3 bounded: an empty cache limited to half the dataset's bytes: random order over more shards
   than fit makes shards come and go (fetch count reported); the peak of the cache directory's
   size is sampled every 5 ms and compared with the limit.

Samples/s exclude DataLoader start-up (timed from the first sample to the last); the four modes
take turns ``--repeats`` times (fresh caches for cold and bounded each time), after one untimed
local pass (page cache); best and median reported. Data under a temporary folder, removed after.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

MODES = ("local", "S3 cold (empty cache)", "S3 warm", "S3 bounded cache (limit = 1/2 dataset)")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def read_all(dataset, order: list[int], workers: int) -> tuple[float, int]:
    """(samples/s after the first sample, samples read)."""
    import torch

    loader = torch.utils.data.DataLoader(dataset, sampler=order, batch_size=None, num_workers=workers,
                                         timeout=600, persistent_workers=False)
    count, start = 0, None
    for _ in loader:
        count += 1
        if start is None:
            start = time.perf_counter()
    return (count - 1) / (time.perf_counter() - start), count


class Peak:
    """Samples a directory's total file size every 5 ms in a thread."""

    def __init__(self, directory: str):
        self.directory, self.peak, self._stop = directory, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                usage = sum(e.stat().st_size for e in os.scandir(self.directory) if e.name != ".lock")
            except FileNotFoundError:
                usage = 0
            self.peak = max(self.peak, usage)
            time.sleep(0.005)

    def __enter__(self) -> "Peak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20, help="records per source (3 sources)")
    parser.add_argument("--shard-size", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import logging

    logging.getLogger("vlutils").setLevel(logging.ERROR)
    from _datasets import make_mixture, save_tokenizer
    from _s3 import SeaweedFS

    from vlutils import storage
    from vlutils.data import PreparedDataset, prepare

    tmp = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    store = SeaweedFS.start()
    try:
        spec = make_mixture(tmp / "data", records=args.records, bad=False)
        tokenizer = save_tokenizer(tmp / "tokenizer.json")
        folder = tmp / "prepared"
        prepare(str(spec), str(folder), str(tokenizer), workers=2, shard_size=args.shard_size)
        options = store.storage_options
        location = store.bucket("bench") + "/prepared"
        shard_files = sorted(folder.glob("part-*.parquet"))
        for path in [folder / "manifest.json", *shard_files]:
            storage.put_file(str(path), storage.join(location, path.name), storage_options=options)
        total_bytes = sum(p.stat().st_size for p in shard_files)
        local = PreparedDataset(str(folder))
        order = list(range(len(local)))
        random.Random(0).shuffle(order)
        print(f"{len(local)} samples in {len(shard_files)} shards, {total_bytes / 1e6:.1f} MB; "
              f"largest shard {max(p.stat().st_size for p in shard_files) / 1e6:.2f} MB; "
              f"DataLoader num_workers={args.workers}", flush=True)

        read_all(local, order, args.workers)  # warm-up: page cache, imports in fresh workers
        limit = total_bytes // 2
        rates: dict[str, list[float]] = {name: [] for name in MODES}
        peaks = []
        # the modes take turns, so a burst of load from elsewhere on the machine hits them alike
        for r in range(args.repeats):
            rates["local"].append(read_all(local, order, args.workers)[0])
            cache = str(tmp / f"cache-{r}")
            rates["S3 cold (empty cache)"].append(
                read_all(PreparedDataset(location, cache_dir=cache, storage_options=options), order, args.workers)[0])
            rates["S3 warm"].append(
                read_all(PreparedDataset(location, cache_dir=cache, storage_options=options), order, args.workers)[0])
            bounded = str(tmp / f"bounded-{r}")
            os.makedirs(bounded)
            with Peak(bounded) as peak:
                ds = PreparedDataset(location, cache_dir=bounded, cache_limit_bytes=limit, storage_options=options)
                rates["S3 bounded cache (limit = 1/2 dataset)"].append(read_all(ds, order, args.workers)[0])
            peaks.append(peak.peak)
        results = {name: max(values) for name, values in rates.items()}
        medians = {name: statistics.median(values) for name, values in rates.items()}

        print(f"\n| read | samples/s (best of {args.repeats}) | vs local | median | vs local |\n|---|---:|---:|---:|---:|")
        for name, rate in results.items():
            print(f"| {name} | {rate:.1f} | {rate / results['local']:.2f}x | {medians[name]:.1f} | "
                  f"{medians[name] / medians['local']:.2f}x |")
        print(f"\nbounded cache: limit {limit / 1e6:.2f} MB, peak directory size {max(peaks) / 1e6:.2f} MB "
              f"({'within' if max(peaks) <= limit else 'OVER'} the limit)")
    finally:
        store.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
