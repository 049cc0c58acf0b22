"""Size distributions for sampler tests and bench/bench_sampler.py (one definition for both)."""

from __future__ import annotations

import numpy as np


def realistic_mix(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(sizes, sources) of four kinds: short captions, documents, multi-image chats, videos."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(4, n, p=[0.4, 0.2, 0.25, 0.15])
    tokens = np.empty(n, dtype=np.int64)
    patches = np.zeros(n, dtype=np.int64)
    cap = kind == 0  # one image, a short caption
    patches[cap] = rng.choice([256, 576, 1024], cap.sum())
    tokens[cap] = rng.integers(20, 120, cap.sum()) + patches[cap] // 4
    doc = kind == 1  # long text, sometimes a page image
    patches[doc] = rng.choice([0, 0, 2304, 4096], doc.sum())
    tokens[doc] = np.clip(rng.lognormal(7.6, 0.6, doc.sum()), 300, 12000).astype(np.int64) + patches[doc] // 4
    multi = kind == 2  # 2-6 images
    patches[multi] = rng.integers(2, 7, multi.sum()) * rng.choice([576, 1024, 2304], multi.sum())
    tokens[multi] = rng.integers(100, 1500, multi.sum()) + patches[multi] // 4
    video = kind == 3
    patches[video] = rng.integers(4000, 24000, video.sum())
    tokens[video] = rng.integers(50, 600, video.sum()) + patches[video] // 4
    return np.stack([tokens, patches], 1), kind
