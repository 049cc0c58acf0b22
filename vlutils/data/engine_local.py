"""The local engine: a process pool on this machine; each worker builds and writes whole shards.

At most ``2 * workers`` shards are in flight (a sliding window over the streamed plan), so the
pool's queue never holds the whole job. ``workers=1`` (or ``None`` on a 1-core machine) runs in
this process. A worker that dies (out of memory, a crash in a native decoder, SIGKILL) fails
the job with ``BrokenProcessPool`` instead of hanging it; rerunning the command resumes, reusing
every shard already written.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Iterable, Iterator

from .plan import ShardPlan
from .worker import ShardContext, WorkerResources, build_shard

_context: ShardContext | None = None


class WorkerDiedError(RuntimeError):
    """A worker process died (killed, out of memory, a crash in a native decoder) mid-shard."""


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _die_with_parent() -> None:
    """Linux: a worker gets SIGKILL when the job's process dies (even by SIGKILL), so no orphan
    keeps decoding after the job is gone."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _init(context: ShardContext) -> None:
    global _context
    import torch

    _die_with_parent()
    torch.set_num_threads(1)  # one process per core already
    _context = context


def _work(plan: ShardPlan) -> dict:
    return build_shard(plan, _context)


def run_local(plans: Iterable[ShardPlan], context: ShardContext, resources: WorkerResources | None = None) -> Iterator[dict]:
    """Build every planned shard; yield each shard's report as it finishes (any order)."""
    workers = (resources.workers if resources else None) or default_workers()
    if workers <= 1:
        for plan in plans:
            yield build_shard(plan, context)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method), initializer=_init,
                             initargs=(context,)) as pool:
        pending: dict = {}

        def finished() -> Iterator[dict]:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                plan = pending.pop(future)
                try:
                    yield future.result()
                except BrokenProcessPool:
                    raise WorkerDiedError(
                        f"a worker process died (killed or out of memory) while shard {plan.number} was being "
                        f"built; finished shards are kept: rerun the same command to resume") from None

        for plan in plans:
            pending[pool.submit(_work, plan)] = plan
            while len(pending) >= 2 * workers:
                yield from finished()
        while pending:
            yield from finished()
