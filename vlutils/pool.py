"""The bounded thread pool that fetches the items of a message (and the frames of a frame-list
video) in parallel: results in input order, the caller's context carried into the threads, and
the first failure in input order raised without waiting for the items after it."""

from __future__ import annotations

import contextvars
import os
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_FETCH_WORKERS = int(os.environ.get("VLUTILS_FETCH_WORKERS", 8))


def is_url(value: Any) -> bool:
    return isinstance(value, str) and value[:8].lower().startswith(("http://", "https://"))


def _cores() -> int:
    """CPUs this process may run on (affinity-aware where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _workers(count: int, io_bound: bool) -> int:
    """Pool size: decoding and resizing are CPU-bound (Pillow and FFmpeg release the GIL), so
    more threads than cores only add page-fault contention; downloads overlap their waiting."""
    limit = _cores() + 2 if io_bound else _cores()
    return max(1, min(count, MAX_FETCH_WORKERS, limit))


def run_parallel(fn: Callable[[T], R], items: Sequence[T], io_bound: bool = False) -> list[R]:
    """``[fn(item) for item in items]`` in a bounded thread pool, results in input order.

    Each task runs in a copy of the caller's context, so a ``vlutils.policy.use(...)`` block
    (a contextvar) reaches the worker threads. When an item fails, the items before it (already
    started: the queue is FIFO) are waited for and the first failure in input order raises;
    later siblings still downloading are not waited for (each is bounded by its own timeouts and
    ends in the background) and queued ones are cancelled. ``io_bound`` (some items are downloads) allows a few threads more than
    there are cores.
    """
    if len(items) <= 1:
        return [fn(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=_workers(len(items), io_bound), thread_name_prefix="vlutils-fetch")
    try:
        futures = [pool.submit(contextvars.copy_context().run, fn, item) for item in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [i for i, future in enumerate(futures) if future in done and future.exception() is not None]
        if failed:
            # The queue is FIFO, so every earlier item has started: let those finish, then the error raised is
            # the first in input order whatever the threads' timing (the same input always names the same item).
            wait(futures[:failed[0]])
            for future in futures[:failed[0] + 1]:
                if future.exception() is not None:
                    raise future.exception()
        return [future.result() for future in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
