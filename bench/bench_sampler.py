"""BudgetBatchSampler across ranks: rank balance next to the naive approach, and epoch planning
time and memory for millions of samples.

    .venv/bin/python bench/bench_sampler.py                       # balance (200k samples), plan 10 M
    .venv/bin/python bench/bench_sampler.py --samples 50000 --plan-samples 1000000   # quicker

Sizes: tests/_size_mixes.py ``realistic_mix`` (40 % short captions with one image, 20 %
documents, 25 % multi-image chats, 15 % videos), budgets 32768 tokens / 65536 patches.

Balance, for 8, 64 and 512 simulated ranks: the cost of each rank's batch at each step
(:class:`vlutils.train.CostModel`, computed here from the batches' sizes); the figure is the
mean over steps of max-rank-cost / mean-rank-cost.
- ours: ``BudgetBatchSampler(sizes, ..., rank=r, world_size=R, shuffle=True)`` for every rank r
  (all of them for 8 ranks; for 64 and 512 the plan of rank 0, which holds every rank's batch
  costs, checked against the real samplers of ranks 0 and R-1).
- naive: torch's ``DistributedSampler(shuffle=True)`` split, then one single-process
  ``BudgetBatchSampler`` per rank over its share (what users write by hand): ranks end up with
  different batch counts (DDP would hang at the first missing step), so the ratio is over the
  steps every rank has, and the spread of counts is reported.

Planning: one child process per case builds the sizes, then times ``BudgetBatchSampler(...)``
and ``len(sampler)`` (plans the epoch) and reports its peak RSS above the RSS with the sizes
loaded (``ru_maxrss``); rank 0 of 8 and of 512 ranks show that memory does not grow with the
world size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

from _size_mixes import realistic_mix  # noqa: E402

MAX_TOKENS, MAX_PATCHES = 32768, 65536


def batch_costs(sizes: np.ndarray, batches: list[list[int]]) -> np.ndarray:
    from vlutils.train import CostModel

    per_sample = CostModel().sample_costs(sizes)
    return np.array([per_sample[b].sum() for b in batches])


def ratio(costs: np.ndarray) -> float:
    """Mean over steps of max / mean over ranks (costs: ranks x steps)."""
    return float((costs.max(0) / costs.mean(0)).mean()) if costs.size else float("nan")


def ours(sizes: np.ndarray, world: int, seed: int) -> dict:
    from vlutils.train import BudgetBatchSampler

    kw = dict(max_tokens=MAX_TOKENS, max_patches=MAX_PATCHES, world_size=world, shuffle=True, seed=seed)
    start = time.perf_counter()
    plan = BudgetBatchSampler(sizes, rank=0, **kw).plan()
    seconds = time.perf_counter() - start
    costs = plan.step_costs.T  # ranks x steps, from the plan
    check = range(world) if world <= 8 else (0, world - 1)
    for r in check:  # the real samplers yield batches whose costs are the plan's
        batches = list(BudgetBatchSampler(sizes, rank=r, **kw))
        assert np.allclose(batch_costs(sizes, batches), costs[r])
    return {"ratio": ratio(costs), "steps": int(plan.num_steps), "batches_per_rank": [plan.num_steps] * 2,
            "plan_s": seconds}


def naive(sizes: np.ndarray, world: int, seed: int) -> dict:
    from torch.utils.data import DistributedSampler

    from vlutils.train import BudgetBatchSampler

    per_rank = []
    for r in range(world):
        indices = np.array(list(DistributedSampler(range(len(sizes)), num_replicas=world, rank=r, shuffle=True,
                                                   seed=seed)))
        local = BudgetBatchSampler(sizes[indices], MAX_TOKENS, MAX_PATCHES)
        per_rank.append(batch_costs(sizes, [indices[b].tolist() for b in local]))
    counts = [len(c) for c in per_rank]
    common = min(counts)
    costs = np.stack([c[:common] for c in per_rank])
    return {"ratio": ratio(costs), "steps": common, "batches_per_rank": [min(counts), max(counts)]}


def balance(samples: int, worlds: list[int], seed: int) -> list[dict]:
    sizes, _ = realistic_mix(seed, samples)
    rows = []
    for world in worlds:
        a, b = ours(sizes, world, seed), naive(sizes, world, seed)
        rows.append({"world_size": world, "ours": a, "naive": b})
        print(f"{world:>4} ranks: ours {a['ratio']:.4f} over {a['steps']} steps (equal counts, plan {a['plan_s']:.2f} s)"
              f" | naive {b['ratio']:.4f} over {b['steps']} steps, batches per rank {b['batches_per_rank'][0]}"
              f"..{b['batches_per_rank'][1]}", flush=True)
    return rows


PLAN_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {tests!r}); sys.path.insert(0, {root!r})
import numpy as np
from _size_mixes import realistic_mix
from vlutils.train import BudgetBatchSampler
sizes, kinds = realistic_mix(0, {samples})
sizes_mb = (sizes.nbytes + kinds.nbytes) / 2**20
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start, cpu = time.perf_counter(), time.process_time()
sampler = BudgetBatchSampler(sizes, {max_tokens}, {max_patches}, rank=0, world_size={world}, sources=kinds,
                             weights=[1.0, 1.0, 0.5, 1.5], shuffle=True, seed=1)
built = time.perf_counter()
steps = len(sampler)
planned, cpu = time.perf_counter(), time.process_time() - cpu
first = next(iter(sampler))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"cpu_s": cpu, "init_s": built - start, "plan_s": planned - built, "total_s": planned - start, "steps": steps,
                  "peak_above_sizes_mb": (peak - base) / 1024, "peak_rss_mb": peak / 1024, "sizes_mb": sizes_mb}}))
"""


def planning(samples: int, world: int) -> dict:
    code = PLAN_CHILD.format(tests=os.path.join(ROOT, "tests"), root=ROOT, samples=samples, world=world,
                             max_tokens=MAX_TOKENS, max_patches=MAX_PATCHES)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=900)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(samples=samples, world_size=world)
    print(f"plan {samples:,} samples, rank 0 of {world}: {result['total_s']:.1f} s (init {result['init_s']:.1f} s, "
          f"plan {result['plan_s']:.1f} s; {result['cpu_s']:.1f} s of CPU), peak RSS {result['peak_rss_mb']:.0f} MiB "
          f"({result['peak_above_sizes_mb']:.0f} MiB above the sizes, which take {result['sizes_mb']:.0f} MiB)",
          flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=200_000, help="samples for the balance figures")
    parser.add_argument("--worlds", default="8,64,512")
    parser.add_argument("--plan-samples", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "sampler.json"))
    args = parser.parse_args()
    worlds = [int(w) for w in args.worlds.split(",") if w]  # --worlds "": planning only
    report = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                         f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
              "balance": balance(args.samples, worlds, args.seed),
              "planning": [planning(args.plan_samples, 8), planning(args.plan_samples, 512)]}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"written {args.out}; own RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
