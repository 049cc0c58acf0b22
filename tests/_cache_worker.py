"""A process that opens random keys of a ShardCache many times (for tests/test_data_streaming.py).

Kept apart from the test module so that spawned children import only the cache, not torch."""

from __future__ import annotations

import os
import random
import time

from vlutils.data.shard_cache import ShardCache


def hammer(cache_dir: str, limit: int, sources: str, seed: int, rounds: int, errors) -> None:
    """Open ``rounds`` random files of ``sources`` through the cache; report wrong bytes or errors."""
    try:
        cache = ShardCache(cache_dir, limit)
        rng = random.Random(seed)
        names = sorted(os.listdir(sources))
        for _ in range(rounds):
            name = rng.choice(names)
            path = os.path.join(sources, name)

            def fetch(out, path=path):
                with open(path, "rb") as src:
                    while chunk := src.read(7000):
                        out.write(chunk)
                        time.sleep(0.0005)  # a slow network: downloads overlap

            with cache.open(name, os.path.getsize(path), fetch) as handle:
                data = handle.read()
            with open(path, "rb") as src:
                if data != src.read():
                    errors.put(f"{name}: wrong bytes")
    except Exception as exc:  # reported to the parent
        errors.put(repr(exc))
