"""Run one backend with a deadline and stream its frames into a preallocated output.

Decoding runs in a worker thread. Backends that decode with several threads of their own
(pyav: ``direct_output``) resize each frame in the thread that decoded it, straight into
its slot of the output (:class:`_DirectSink`). For the others a small pool resizes frames
as they arrive (FFmpeg and torch both release the GIL, so they overlap); a bounded queue
and a bounded number of pending resizes keep at most a few full-size frames alive. The
caller stops waiting at the deadline and raises :class:`DecodeTimeoutError`; the workers
notice between packets and exit. A reader with ``abort()`` (decord, which runs in a child
process) is killed at the deadline; for the in-process backends a C call that never
returns leaves only that daemon thread behind.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..errors import DecodeError, DecodeTimeoutError, VisionInputError
from .backends.base import Backend, Probe
from . import resize_fast
from .resize import resize_exact

logger = logging.getLogger(__name__)

QUEUE_FRAMES = 4
# Threads resizing frames (each on one torch thread) while the decoder runs. 1 by default:
# on the 2-core bench machine 2 gave no measurable gain and more memory; raise it with
# VLUTILS_VIDEO_RESIZE_THREADS on machines with many cores (not measured here).
RESIZE_THREADS = max(1, int(os.environ.get("VLUTILS_VIDEO_RESIZE_THREADS", "1")))
MAX_PENDING = 2 * RESIZE_THREADS
_POLL = 0.25


@dataclass
class Plan:
    """What to decode: the frame indices (one per output slot) and the counts they came from."""

    indices: list[int]
    count: int  # frames in the [video_start, video_end] window
    fps: float
    vfr: bool = False


@dataclass
class DecodeResult:
    video: torch.Tensor
    plan: Plan
    probe: Probe
    source_size: tuple[int, int]  # display-oriented (height, width) of the decoded frames
    reader: Any
    seconds: float


class _Sink:
    """Called from the worker: computes the target size once, forwards frames to the queue."""

    def __init__(self, q: queue.Queue, stop: threading.Event, size_fn: Callable[[int, int], tuple[int, int]], fast: bool):
        self._q, self._stop, self._size_fn = q, stop, size_fn
        self.fast_resize = fast
        self.size: tuple[int, int] | None = None
        self.source_size: tuple[int, int] | None = None

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        if self.size is None:
            self.source_size = (int(height), int(width))
            self.size = self._size_fn(int(height), int(width))
            self._send(("size", self.source_size, self.size))
        return self.size

    def put(self, index: int, frame: np.ndarray) -> None:
        if self.size is None:
            self.target_size(frame.shape[0], frame.shape[1])
        self._send(("frame", index, frame))

    def _send(self, item: tuple) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue


class _DirectSink(_Sink):
    """Resizes each frame in the calling (decoding) thread into its output slots; thread-safe.
    The output is allocated when the first frame's size is known."""

    def __init__(self, q: queue.Queue, stop: threading.Event, size_fn, fast: bool, out_dtype: torch.dtype):
        super().__init__(q, stop, size_fn, fast)
        self._lock = threading.Lock()
        self._dtype = out_dtype
        self.slots: dict[int, list[int]] = {}
        self.count = 0
        self.video: torch.Tensor | None = None
        self._filled: set[int] = set()

    def set_plan(self, plan: Plan) -> None:
        for slot, index in enumerate(plan.indices):
            self.slots.setdefault(index, []).append(slot)
        self.count = len(plan.indices)

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        with self._lock:
            if self.size is None:
                self.source_size = (int(height), int(width))
                size = self._size_fn(int(height), int(width))
                self.video = torch.empty((self.count, 3, *size), dtype=self._dtype)
                self.size = size
                if not self.fast_resize:
                    resize_fast.prepare_in_background(self.source_size, size, self.count)
            return self.size

    def put(self, index: int, frame: np.ndarray) -> None:
        if self.size is None:
            self.target_size(frame.shape[0], frame.shape[1])
        slots = self.slots.get(index, ())
        _store(self.video, slots, frame, self.fast_resize)
        with self._lock:
            self._filled.update(slots)

    @property
    def filled(self) -> int:
        return len(self._filled)


def decode_video(
    backend: Backend,
    path: str,
    source: Any,
    plan_fn: Callable[[Probe], Plan],
    size_fn: Callable[[int, int], tuple[int, int]],
    *,
    timeout: float,
    out_dtype: torch.dtype = torch.float32,
    fast_resize: bool = False,
    threads: int = 0,
) -> DecodeResult:
    """Open ``path`` with ``backend``, sample per ``plan_fn`` and return resized frames."""
    started = time.monotonic()
    deadline = started + timeout
    q: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
    stop = threading.Event()
    direct = bool(getattr(backend, "direct_output", False))
    sink = _DirectSink(q, stop, size_fn, fast_resize, out_dtype) if direct else _Sink(q, stop, size_fn, fast_resize)
    state: dict[str, Any] = {}

    def work() -> None:
        reader = None
        try:
            if direct:
                _single_thread_resize()  # this thread may resize frames (pyav's forward pass)
            reader = backend.open(path, source, threads)
            state["reader"] = reader
            probe = reader.probe()
            plan = plan_fn(probe)
            if direct:
                sink.set_plan(plan)
            sink._send(("plan", probe, plan))
            reader.read(sorted(set(plan.indices)), sink, stop.is_set)
            sink._send(("done",))
        except BaseException as exc:  # forwarded to the caller
            sink._send(("error", exc))
        finally:
            if reader is not None:
                try:
                    reader.close()
                except Exception:  # pragma: no cover - best effort
                    pass

    worker = threading.Thread(target=work, name=f"vlutils-video-{backend.name}", daemon=True)
    worker.start()
    video = probe = plan = None
    slots: dict[int, list[int]] = {}
    filled = 0
    pending: collections.deque[Future] = collections.deque()
    caller_threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(RESIZE_THREADS, thread_name_prefix="vlutils-resize", initializer=_single_thread_resize)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _timed_out(backend.name, timeout, source, state)
            try:
                item = q.get(timeout=min(remaining, _POLL))
            except queue.Empty:
                continue
            kind = item[0]
            if kind == "plan":
                _, probe, plan = item
                for slot, index in enumerate(plan.indices):
                    slots.setdefault(index, []).append(slot)
            elif kind == "size":
                _, source_size, (height, width) = item
                video = torch.empty((len(plan.indices), 3, height, width), dtype=out_dtype)
                if not fast_resize:
                    resize_fast.prepare_in_background(source_size, (height, width), len(plan.indices))
            elif kind == "frame":
                _, index, frame = item
                while len(pending) >= MAX_PENDING:
                    filled += _wait(pending.popleft(), deadline, backend.name, timeout, source, state)
                pending.append(pool.submit(_store, video, slots.get(index, ()), frame, fast_resize))
            elif kind == "error":
                exc = item[1]
                if isinstance(exc, VisionInputError):
                    raise exc
                raise DecodeError(f"{backend.name} failed: {type(exc).__name__}: {exc}", source) from exc
            else:  # done
                break
        while pending:
            filled += _wait(pending.popleft(), deadline, backend.name, timeout, source, state)
        if direct:
            video, filled = sink.video, sink.filled
        if video is None or filled != len(plan.indices):
            raise DecodeError(f"{backend.name} returned {filled} of {len(plan.indices)} requested frames", source)
    finally:
        stop.set()
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)
        _restore_default_threads(caller_threads)
    worker.join(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
    return DecodeResult(video, plan, probe, sink.source_size, state.get("reader"), time.monotonic() - started)


def _timed_out(name: str, timeout: float, source: Any, state: dict) -> None:
    _abort(state.get("reader"))
    raise DecodeTimeoutError(
        f"decoding with backend {name!r} took longer than {timeout:g}s "
        "(raise the limit with timeout= or VLUTILS_VIDEO_TIMEOUT)",
        source,
    )


def _wait(future: Future, deadline: float, name: str, timeout: float, source: Any, state: dict) -> int:
    """Result of one resize job, or DecodeTimeoutError at the deadline."""
    try:
        return future.result(timeout=max(0.0, deadline - time.monotonic()))
    except FutureTimeout:
        _timed_out(name, timeout, source, state)


def _abort(reader: Any) -> None:
    """Stop a reader that can be killed from outside (the decord child process)."""
    abort = getattr(reader, "abort", None)
    if abort is not None:
        try:
            abort()
        except Exception:  # pragma: no cover - best effort
            logger.debug("abort failed", exc_info=True)


def _restore_default_threads(threads: int) -> None:
    """torch.set_num_threads also stores a process-wide default that torch's own new threads
    (autograd, inter-op) start with: put back the caller's value once the pool is gone."""
    if "OpenMP" in torch.__config__.parallel_info() and torch.get_num_threads() == threads:
        torch.set_num_threads(threads)


def _single_thread_resize() -> None:
    """Each resize thread runs torch single-threaded (torch's default of all cores per op,
    next to FFmpeg's threads, oversubscribes and ran ~3x slower here). With OpenMP the
    setting is per thread, so only these pool threads are affected; other builds keep
    their setting."""
    if "OpenMP" in torch.__config__.parallel_info():
        torch.set_num_threads(1)


def _store(video: torch.Tensor, slots: list[int], frame: np.ndarray, fast_resize: bool) -> int:
    """Resize one HWC uint8 frame into every output slot that wants it.

    Uses the compiled exact resize (:mod:`resize_fast`) once its plan for this size pair is
    built and verified (it is built in the background; until then, and wherever it is not
    available, torch's kernel gives the same values)."""
    if not slots:
        return 0
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise DecodeError(f"backend produced a frame of shape {frame.shape} and dtype {frame.dtype}")
    height, width = video.shape[-2:]
    if fast_resize and tuple(frame.shape[:2]) == (height, width):
        resized = torch.from_numpy(frame).permute(2, 0, 1)
    else:
        plan = resize_fast.ready(frame.shape[:2], (height, width))
        if plan is not None:
            direct = len(slots) == 1 and video.dtype in (torch.float32, torch.uint8)
            target = video[slots[0]] if direct else torch.empty((3, height, width), dtype=torch.float32)
            plan.resize_into(frame, target)
            if direct:
                return 1
            resized = target
        else:
            chw = torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0)  # channels-last, as the reference
            if len(slots) == 1 and video.dtype == torch.float32:
                resize_exact(chw, height, width, out=video[slots[0] : slots[0] + 1])  # straight into the output
                return 1
            resized = resize_exact(chw, height, width)[0]
    for slot in slots:
        video[slot].copy_(resized)
    return len(slots)
