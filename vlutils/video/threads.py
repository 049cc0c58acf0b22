"""How many decoder threads a video call may use, within one budget per process.

``VLUTILS_VIDEO_THREADS`` sets the budget; by default it is the number of cores this
process may run on (``os.sched_getaffinity``), except inside a DataLoader worker or any
other multiprocessing child, where it is 1: there are usually as many such processes as
cores, and giving each all cores would multiply threads by processes. Calls running at
the same time in one process (``process_vision_info`` fetches videos in parallel) share
the budget: each takes what is free, at least one thread, and gives it back at the end.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading

from ..errors import InvalidOptionError

logger = logging.getLogger(__name__)

THREADS_ENV = "VLUTILS_VIDEO_THREADS"


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def in_worker_process() -> bool:
    """True inside a torch DataLoader worker or another multiprocessing child."""
    data = sys.modules.get("torch.utils.data")  # never imported here: only asked if loaded
    if data is not None and getattr(data, "get_worker_info", None) is not None:
        try:
            if data.get_worker_info() is not None:
                return True
        except Exception:  # pragma: no cover - defensive
            pass
    return multiprocessing.parent_process() is not None


def video_threads() -> int:
    """The process's decoder-thread budget (see the module docstring)."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            raise InvalidOptionError(f"{THREADS_ENV} must be a whole number of threads, got {raw!r}") from None
        if value < 1:
            raise InvalidOptionError(f"{THREADS_ENV} must be at least 1, got {value}")
        return value
    return 1 if in_worker_process() else available_cores()


class ThreadBudget:
    """Counts the decoder threads in use in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used = 0

    def acquire(self, wanted: int) -> int:
        """Take up to ``wanted`` threads of what is free under :func:`video_threads` (at least 1)."""
        total = video_threads()
        with self._lock:
            granted = max(1, min(wanted, total - self._used))
            self._used += granted
            return granted

    def release(self, count: int) -> None:
        with self._lock:
            self._used = max(0, self._used - count)

    @property
    def in_use(self) -> int:
        return self._used


BUDGET = ThreadBudget()
