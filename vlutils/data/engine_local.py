"""The local engine: a process pool on this machine (one tokenizer per worker), results in order.

At most ``4 * workers`` jobs are in flight (a sliding window), so a million-line dataset never
sits in the pool's queue and no worker idles while the oldest job finishes.
``workers=1`` (or ``None`` on a 1-core machine) runs in this process. A worker that dies (out of
memory, a crash in a native decoder) fails the job with ``BrokenProcessPool`` instead of hanging
it; rerunning the command resumes after the last finished shard.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, Iterator

from .build import Job, SampleBuilder
from .spec import DatasetSpec

_builder: SampleBuilder | None = None


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


def _init(spec: DatasetSpec, tokenizer: str, model_type: str) -> None:
    global _builder
    import torch

    _die_with_parent()
    torch.set_num_threads(1)  # one process per core already
    _builder = SampleBuilder(spec, tokenizer, model_type)


def _work(job: Job) -> dict:
    return _builder(job)


def run_local(jobs: Iterable[Job], spec: DatasetSpec, tokenizer: str, model_type: str,
              workers: int | None = None) -> Iterator[tuple[Job, dict]]:
    """``(job, result)`` for every job, in the order given."""
    workers = workers or default_workers()
    if workers <= 1:
        builder = SampleBuilder(spec, tokenizer, model_type)
        for job in jobs:
            yield job, builder(job)
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init,
                             initargs=(spec, tokenizer, model_type)) as pool:
        pending: collections.deque = collections.deque()
        for job in jobs:
            pending.append((job, pool.submit(_work, job)))
            if len(pending) >= 4 * workers:
                oldest, future = pending.popleft()
                yield oldest, future.result()
        while pending:
            oldest, future = pending.popleft()
            yield oldest, future.result()
