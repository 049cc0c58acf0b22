"""BudgetBatchSampler across simulated ranks: coverage, equal counts, budgets, rank balance,
mixture weights, exact resume and elastic resume, over many random size distributions.

Every rank is its own sampler object built from the same arguments, as on a real job; the
expectations (counts per source, costs) are computed here from the sizes, not read from the plan.
"""

from __future__ import annotations

import collections
import datetime
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from vlutils.errors import InvalidOptionError, SampleTooLongError
from vlutils.train import BudgetBatchSampler, SizeTable

from _size_mixes import realistic_mix



def run_ranks(sizes, world_size, **kw) -> list[list[list[int]]]:
    return [list(BudgetBatchSampler(sizes, rank=r, world_size=world_size, **kw)) for r in range(world_size)]


def batch_cost(sizes: np.ndarray, batch: list[int]) -> float:
    t = sizes[batch, 0].astype(float)
    p = sizes[batch, 1].astype(float)
    return float((t + 0.1 * p + 1.5e-5 * t * t + 1.6e-6 * p * p).sum())


def check_batches(per_rank, sizes, max_tokens, max_patches):
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1, f"ranks yield different numbers of batches: {[len(b) for b in per_rank]}"
    for batches in per_rank:
        for batch in batches:
            assert batch, "an empty batch"
            assert sizes[batch, 0].sum() <= max_tokens
            if max_patches is not None:
                assert sizes[batch, 1].sum() <= max_patches


sizes_st = st.lists(st.tuples(st.integers(0, 300), st.integers(0, 900)), min_size=0, max_size=120)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(sizes=sizes_st, world_size=st.integers(1, 9), max_tokens=st.integers(300, 1200),
       max_patches=st.one_of(st.none(), st.integers(900, 3000)), shuffle=st.booleans(),
       drop_remainder=st.booleans(), seed=st.integers(0, 2**31), epoch=st.integers(0, 5),
       buffer_size=st.sampled_from([None, 1, 7, 64]), min_fill=st.sampled_from([0.0, 0.9, 1.0]))
def test_every_sample_once_equal_counts_within_budgets(sizes, world_size, max_tokens, max_patches, shuffle,
                                                       drop_remainder, seed, epoch, buffer_size, min_fill):
    array = np.array(sizes, dtype=np.int64).reshape(-1, 2)
    kw = dict(max_tokens=max_tokens, max_patches=max_patches, shuffle=shuffle, seed=seed,
              drop_remainder=drop_remainder, buffer_size=buffer_size, min_fill=min_fill)
    samplers = [BudgetBatchSampler(array, rank=r, world_size=world_size, **kw) for r in range(world_size)]
    per_rank = []
    for s in samplers:
        s.set_epoch(epoch)
        per_rank.append(list(s))
    check_batches(per_rank, array, max_tokens, max_patches)
    used = sorted(i for batches in per_rank for b in batches for i in b)
    dropped = sorted(samplers[0].plan().dropped.tolist())
    assert sorted(used + dropped) == list(range(len(array)))  # each sample exactly once, or reported dropped
    if not drop_remainder and dropped:  # splitting keeps every sample unless too few for one more step
        assert len(array) < world_size * (len(per_rank[0]) + 1)
    assert all(len(s) == len(per_rank[0]) for s in samplers)  # len() agrees with the iteration


@settings(max_examples=40, deadline=None, derandomize=True)
@given(n=st.lists(st.integers(0, 40), min_size=1, max_size=4),
       weights=st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.7]), min_size=4, max_size=4),
       world_size=st.integers(1, 5), seed=st.integers(0, 1000), shuffle=st.booleans())
def test_multiplier_weights_realise_round_w_n(n, weights, world_size, seed, shuffle):
    sources = np.repeat(np.arange(len(n)), n)
    rng = np.random.default_rng(seed)
    sizes = np.stack([rng.integers(1, 200, len(sources)), rng.integers(0, 300, len(sources))], 1)
    weights = weights[:len(n)]
    kw = dict(max_tokens=400, max_patches=900, sources=sources, weights=weights, shuffle=shuffle, seed=seed)
    per_rank = run_ranks(sizes, world_size, **kw)
    check_batches(per_rank, sizes, 400, 900)
    plan_dropped = BudgetBatchSampler(sizes, world_size=world_size, rank=0, **kw).plan().dropped
    seen = collections.Counter(i for batches in per_rank for b in batches for i in b)
    seen.update(plan_dropped.tolist())
    for s, (count, w) in enumerate(zip(n, weights)):
        want = round(w * count)  # Python's round, the documented rule
        members = np.flatnonzero(sources == s)
        assert sum(seen[i] for i in members) == want, (s, count, w)
        if count:  # repeats spread evenly over the samples: every sample floor or ceil of w
            low = want // count
            assert all(low <= seen[i] <= low + 1 for i in members)


def test_proportion_weights_are_shares_of_the_epoch():
    sizes, kind = realistic_mix(3, 4000)
    sampler = BudgetBatchSampler(sizes, 32768, 65536, sources=kind, weights=[1, 1, 1, 5],
                                 weights_mode="proportion", epoch_size=3001, shuffle=True)
    seen = collections.Counter(kind[i] for b in sampler for i in b)
    assert sum(seen.values()) == 3001
    for s, share in enumerate([1 / 8, 1 / 8, 1 / 8, 5 / 8]):
        assert abs(seen[s] - share * 3001) < 1
    with pytest.raises(InvalidOptionError, match="epoch_size"):
        BudgetBatchSampler(sizes, 32768, 65536, epoch_size=10)


def test_weights_by_source_name_and_deterministic_order():
    sizes, kind = realistic_mix(4, 600)
    names = np.array(["caption", "doc", "multi", "video"])[kind]
    a = BudgetBatchSampler(sizes, 32768, 65536, sources=names, weights={"video": 0.5, "doc": 2}, shuffle=True, seed=3)
    b = BudgetBatchSampler(sizes, 32768, 65536, sources=names, weights={"video": 0.5, "doc": 2}, shuffle=True, seed=3)
    first = list(a)
    assert first == list(b)
    a.set_epoch(1)
    second = list(a)
    assert second != first
    counts = collections.Counter(names[i] for batch in second for i in batch)
    assert counts["video"] == round(0.5 * (kind == 3).sum()) and counts["doc"] == 2 * (kind == 1).sum()
    with pytest.raises(InvalidOptionError, match="unknown source 'audio'"):
        BudgetBatchSampler(sizes, 32768, 65536, sources=names, weights={"audio": 1})


@pytest.mark.parametrize("seed,n", [(0, 30000), (1, 30000), (2, 2000), (3, 2000)])  # 2000: only ~15 steps
def test_rank_balance_8_ranks_realistic_mix(seed, n):
    sizes, _ = realistic_mix(seed, n)
    per_rank = run_ranks(sizes, 8, max_tokens=32768, max_patches=65536, shuffle=True, seed=seed)
    check_batches(per_rank, sizes, 32768, 65536)
    costs = np.array([[batch_cost(sizes, b) for b in rank] for rank in per_rank])  # ranks x steps
    ratio = (costs.max(0) / costs.mean(0)).mean()
    assert ratio <= 1.05, ratio


def test_single_process_defaults_match_the_old_sampler_contract():
    sizes = [(10, 0), (20, 5), None, (400, 0), (5, 5)]
    sampler = BudgetBatchSampler(sizes, 512)  # rank 0 of 1 without torch.distributed
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == [0, 1, 3, 4]
    assert len(sampler) == len(batches) and batches == list(sampler)
    with pytest.raises(SampleTooLongError, match="sample 3"):
        BudgetBatchSampler(sizes, 300)
    with pytest.raises(InvalidOptionError, match="rank"):
        BudgetBatchSampler(sizes, 512, rank=2, world_size=2)


def test_len_is_cached_per_epoch(monkeypatch):
    import vlutils.train.sampler as module

    calls = []
    real = module.pack_epoch
    monkeypatch.setattr(module, "pack_epoch", lambda *a, **k: calls.append(1) or real(*a, **k))
    sizes, _ = realistic_mix(1, 2000)
    sampler = BudgetBatchSampler(sizes, 32768, 65536, world_size=4, rank=1, shuffle=True)
    n = len(sampler)
    assert [len(sampler) for _ in range(5)] == [n] * 5 and len(list(sampler)) == n
    assert len(calls) == 1
    sampler.set_epoch(1)
    len(sampler), list(sampler)
    assert len(calls) == 2


def test_state_is_small_and_resume_continues_on_every_rank():
    sizes, kind = realistic_mix(7, 2000)
    kw = dict(max_tokens=32768, max_patches=65536, sources=kind, weights=[0.5, 1, 2, 1], shuffle=True, seed=11)
    world = 4
    for epoch in (0, 2):
        full = []
        for r in range(world):
            s = BudgetBatchSampler(sizes, rank=r, world_size=world, **kw)
            s.set_epoch(epoch)
            full.append(list(s))
        for k in (0, 1, len(full[0]) // 2, len(full[0]) - 1, len(full[0])):
            live = BudgetBatchSampler(sizes, rank=0, world_size=world, **kw)
            live.set_epoch(epoch)
            it = iter(live)
            for _ in range(k):
                next(it)
            state = json.loads(json.dumps(live.state_dict()))  # survives a JSON checkpoint
            assert len(json.dumps(state)) < 400
            for r in range(world):
                restored = BudgetBatchSampler(sizes, rank=r, world_size=world, **kw)
                restored.load_state_dict(state)
                restored.set_epoch(epoch)  # the training loop's call keeps the restored position
                assert len(restored) == len(full[r]) - k
                assert list(restored) == full[r][k:]
                assert list(restored) == full[r]  # the next pass over the epoch starts at its beginning


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 700), old=st.integers(1, 7), new=st.integers(1, 7),
       fraction=st.floats(0, 1), again=st.integers(1, 5), drop_remainder=st.booleans())
def test_elastic_resume_uses_every_sample_once(seed, n, old, new, fraction, again, drop_remainder):
    sizes, kind = realistic_mix(seed, n)
    kw = dict(max_tokens=40000, max_patches=70000, sources=kind, weights=[1, 0.5, 1, 1.5], shuffle=True, seed=seed,
              drop_remainder=drop_remainder)
    first = run_ranks(sizes, old, **kw)
    k = int(fraction * len(first[0]))
    consumed = [b for rank in first for b in rank[:k]]
    state = BudgetBatchSampler(sizes, rank=0, world_size=old, **kw).state_dict(step=k)
    second, dropped = [], None
    for r in range(new):
        s = BudgetBatchSampler(sizes, rank=r, world_size=new, **kw)
        s.load_state_dict(state)
        second.append(list(s))
        dropped = s.plan().dropped
    check_batches(second, sizes, 40000, 70000)
    # a second restart (W' -> W'') halfway through the rest
    k2 = len(second[0]) // 2
    state2 = BudgetBatchSampler(sizes, rank=0, world_size=new, **kw)
    state2.load_state_dict(state)
    state2 = state2.state_dict(step=state2.start_step + k2)  # steps count from the part's start
    third = []
    for r in range(again):
        s = BudgetBatchSampler(sizes, rank=r, world_size=again, **kw)
        s.load_state_dict(state2)
        third.append(list(s))
        dropped2 = s.plan().dropped
    check_batches(third, sizes, 40000, 70000)
    # every selected sample exactly once over the parts (or reported as dropped at the end)
    selected = collections.Counter(i for rank in run_ranks(sizes, 1, **kw) for b in rank for i in b)
    both = collections.Counter(i for b in consumed for i in b)
    both.update(i for rank in second for b in rank for i in b)
    assert both + collections.Counter(dropped.tolist()) == selected
    three = collections.Counter(i for b in consumed for i in b)
    three.update(i for rank in second for b in rank[:k2] for i in b)
    three.update(i for rank in third for b in rank for i in b)
    assert three + collections.Counter(dropped2.tolist()) == selected
    # deterministic for (seed, epoch, W, step, W')
    again_second = []
    for r in range(new):
        s = BudgetBatchSampler(sizes, rank=r, world_size=new, **kw)
        s.load_state_dict(state)
        again_second.append(list(s))
    assert again_second == second


def test_bad_states_and_inputs_are_refused():
    sizes, _ = realistic_mix(2, 300)
    sampler = BudgetBatchSampler(sizes, 40000, 70000, shuffle=True)
    state = sampler.state_dict()
    other = BudgetBatchSampler(sizes[:-1], 40000, 70000, shuffle=True)
    with pytest.raises(InvalidOptionError, match="fingerprint"):
        other.load_state_dict(state)
    with pytest.raises(InvalidOptionError, match="format"):
        sampler.load_state_dict({"step": 3})
    with pytest.raises(InvalidOptionError, match="weights_mode"):
        BudgetBatchSampler(sizes, 40000, weights_mode="share")
    with pytest.raises(InvalidOptionError, match="2 values for 3 sources"):
        BudgetBatchSampler(sizes, 40000, sources=np.arange(300) % 3, weights=[1, 2])
    with pytest.raises(InvalidOptionError, match="one source per sample"):
        BudgetBatchSampler(sizes, 40000, sources=[0, 1])
    with pytest.raises(InvalidOptionError, match="non-negative"):
        BudgetBatchSampler([(1, -1)], 40000)


def test_size_table_reads_like_the_old_list():
    table = SizeTable.from_list([(3, 4), None, (5, 0)])
    assert table[0] == (3, 4) and table[1] is None and list(table) == [(3, 4), None, (5, 0)]
    assert table == [(3, 4), None, (5, 0)] and len(table) == 3
    assert np.asarray(table).shape == (3, 2)
    with pytest.warns(DeprecationWarning):
        assert table() == [(3, 4), None, (5, 0)]
    sampler = BudgetBatchSampler(table, 10)
    assert sorted(i for b in sampler for i in b) == [0, 2]


def test_world_size_from_torch_distributed(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        sampler = BudgetBatchSampler([(1, 0)] * 10, 4)
        assert (sampler.rank, sampler.world_size) == (0, 1)
    finally:
        dist.destroy_process_group()


def _ddp_rank(rank: int, world: int, rendezvous: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        sizes, kind = realistic_mix(9, 800)
        sampler = BudgetBatchSampler(sizes, 32768, 65536, sources=kind, weights=[1, 2, 0.5, 1], shuffle=True)
        mine = list(sampler)
        gathered = [None] * world
        dist.all_gather_object(gathered, (sampler.rank, sampler.world_size, mine))
        if rank == 0:
            with open(out, "w") as handle:
                json.dump(gathered, handle)
    finally:
        dist.destroy_process_group()


def test_ranks_and_world_size_from_a_real_gloo_group(tmp_path):
    """Two processes in a gloo group, samplers built without rank/world_size: equal counts and
    the same batches as samplers told their rank explicitly."""
    import torch.multiprocessing as mp

    out = tmp_path / "gathered.json"
    mp.start_processes(_ddp_rank, args=(2, str(tmp_path / "rendezvous"), str(out)), nprocs=2, join=True,
                       start_method="fork")
    gathered = json.loads(out.read_text())
    sizes, kind = realistic_mix(9, 800)
    for rank, (seen_rank, seen_world, batches) in enumerate(gathered):
        assert (seen_rank, seen_world) == (rank, 2)
        explicit = BudgetBatchSampler(sizes, 32768, 65536, sources=kind, weights=[1, 2, 0.5, 1], shuffle=True,
                                      rank=rank, world_size=2)
        assert batches == list(explicit)
    assert len(gathered[0][2]) == len(gathered[1][2])
