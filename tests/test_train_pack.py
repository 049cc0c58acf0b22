"""pack: invariants (hypothesis), determinism, errors, and closeness to the lower bound on
realistic two-budget size distributions; the streaming budget batch sampler."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from vlutils.errors import SampleTooLongError
from vlutils.train import BudgetBatchSampler, lower_bound, pack

sizes_strategy = st.lists(st.tuples(st.integers(0, 120), st.integers(0, 300)), min_size=0, max_size=60)


def _check(bins, sizes, max_tokens, max_patches):
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(sizes)))  # every index exactly once
    for b in bins:
        assert b and b == sorted(b)
        assert sum(sizes[i][0] for i in b) <= max_tokens
        if max_patches is not None:
            assert sum(sizes[i][1] for i in b) <= max_patches
    assert len(bins) >= lower_bound(sizes, max_tokens, max_patches)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(sizes=sizes_strategy, max_tokens=st.integers(120, 400), max_patches=st.one_of(st.none(), st.integers(300, 900)),
       method=st.sampled_from(["ffd", "bfd", "best"]))
def test_pack_invariants(sizes, max_tokens, max_patches, method):
    bins = pack(sizes, max_tokens, max_patches, method=method)
    _check(bins, sizes, max_tokens, max_patches)
    assert bins == pack(list(sizes), max_tokens, max_patches, method=method)  # deterministic
    assert 0.0 <= bins.fill_ratio <= 1.0
    if method == "best":
        assert len(bins) <= len(pack(sizes, max_tokens, max_patches, method="ffd"))
    # one budget: first fit leaves at most one bin half empty or less, so bins <= 2 * bound + 1
    if max_patches is None:
        assert len(bins) <= 2 * lower_bound(sizes, max_tokens) + 1


def test_pack_errors_name_the_sample():
    with pytest.raises(SampleTooLongError, match="sample 2: 500 tokens > max_tokens 400"):
        pack([(10, 0), (20, 0), (500, 0)], 400)
    with pytest.raises(SampleTooLongError, match="sample 1: 9000 vision patches"):
        pack([(10, 0), (20, 9000)], 400, 8192)
    for bad in ([(1, -1)], [(1,)], ["ab"]):
        with pytest.raises(ValueError):
            pack(bad, 400)
    for budget in (0, -3, 1.5, True):
        with pytest.raises(ValueError):
            pack([(1, 1)], budget)


def realistic_sizes(seed: int, n: int = 3000):
    """Chat lengths log-normal; 0-4 images of common sizes; a fifth of samples with a video."""
    rng = np.random.default_rng(seed)
    text = np.clip(rng.lognormal(6.0, 0.8, n), 30, 4000).astype(int)
    images = rng.choice([0, 0, 1, 1, 2, 4], n)
    patches = np.array([sum(int(rng.choice([256, 576, 1024, 2304, 4096])) for _ in range(k)) for k in images])
    patches += (rng.random(n) < 0.2) * rng.integers(2000, 12000, n)
    tokens = text + patches // 4  # 2x2 patches merge into one LLM token
    return list(zip(tokens.tolist(), patches.tolist()))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("budgets", ["tokens", "balanced", "patches"])
def test_pack_within_8_percent_of_lower_bound(seed, budgets):
    sizes = realistic_sizes(seed)
    tokens, patches = (sum(s[i] for s in sizes) for i in (0, 1))
    max_tokens = 16384
    biggest = max(p for _, p in sizes)
    max_patches = {"tokens": 4 * biggest, "balanced": max(biggest, int(patches / tokens * max_tokens)),
                   "patches": biggest}[budgets]
    bins = pack(sizes, max_tokens, max_patches)
    _check(bins, sizes, max_tokens, max_patches)
    assert len(bins) <= 1.08 * bins.lower_bound, (len(bins), bins.lower_bound)


def test_sampler_streams_within_budgets_and_covers_every_sample():
    sizes = realistic_sizes(5, n=1500)
    sizes[7] = None  # left out (dropped when sizes were computed)
    sampler = BudgetBatchSampler(sizes, 16384, 40000, buffer_size=256, shuffle=True, seed=1)
    batches = list(sampler)
    assert len(sampler) == len(batches)
    seen = sorted(i for b in batches for i in b)
    assert seen == [i for i in range(len(sizes)) if i != 7]
    for b in batches:
        assert sum(sizes[i][0] for i in b) <= 16384 and sum(sizes[i][1] for i in b) <= 40000
    assert batches == list(sampler)  # same epoch, same batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    full = pack([s for s in sizes if s is not None], 16384, 40000)
    assert len(batches) <= 1.08 * full.lower_bound  # streaming loses little against packing everything


def test_sampler_rejects_oversized_sample_by_dataset_index():
    with pytest.raises(SampleTooLongError, match="sample 3"):
        BudgetBatchSampler([(1, 0), (2, 0), None, (900, 0)], 512)
