"""The asyncio API: ``aprocess_vision_info``, ``afetch_image`` and ``afetch_video``.

Same arguments and results as the sync functions. The blocking work (downloads, decodes,
resizes) runs in threads, one per vision item, so the event loop is never blocked and many
concurrent calls overlap. In-flight items are bounded per event loop by the same
``VLUTILS_FETCH_WORKERS`` limit (8) the sync pool uses; every item keeps its own time limits.

Each thread runs in a copy of the caller's context (safe-mode policy and media cache scopes
apply) plus a cancel token: cancelling the awaiting task raises ``CancelledError`` at once and
sets the token, which the download loop (between chunks), the image decode and the video
decode loop (between frames) check, so the work stops and temporary files are removed; a
request waiting for the server's answer has its socket shut down (only a TCP connect in
progress runs on to its connect timeout). Threads end with their item: none is kept in a pool.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import weakref
from typing import Any, Callable

from . import cancel as _cancel
from .pool import MAX_FETCH_WORKERS

__all__ = ["aprocess_vision_info", "afetch_image", "afetch_video"]

_limits: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]" = weakref.WeakKeyDictionary()


def _semaphore() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    sem = _limits.get(loop)
    if sem is None:
        sem = _limits[loop] = asyncio.Semaphore(MAX_FETCH_WORKERS)
    return sem


async def _in_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a new thread (bounded by the loop's semaphore); cancellable cooperatively."""
    sem = _semaphore()
    await sem.acquire()
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    event = _cancel.Token()
    context = contextvars.copy_context()
    context.run(_cancel.set_token, event)

    def deliver(ok: bool, value: Any) -> None:  # on the loop
        sem.release()  # released when the thread's work ends, not when its awaiter gives up
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def run() -> None:
        try:
            outcome = (True, context.run(fn))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome = (False, exc)
        try:
            loop.call_soon_threadsafe(deliver, *outcome)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    try:
        threading.Thread(target=run, name="vlutils-async", daemon=True).start()
    except BaseException:
        sem.release()
        raise
    try:
        return await future
    except asyncio.CancelledError:
        event.set()  # the thread notices at its next check and stops
        raise


async def _gather_in_order(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run jobs concurrently; results in order. On the first failure the others are cancelled
    and the earliest failure (in input order) among those finished is raised, like the sync pool."""
    if not jobs:
        return []
    tasks = [asyncio.ensure_future(_in_thread(job)) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task in done and not task.cancelled() and task.exception() is not None:
                raise task.exception()
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()


async def aprocess_vision_info(
    conversations: list[dict] | list[list[dict]],
    return_video_kwargs: bool = False,
    return_video_metadata: bool = False,
    image_patch_size: int = 14,
    *,
    frames_patch_grid: bool = False,
):
    """``process_vision_info`` for asyncio: same arguments and results."""
    from . import policy as _policy
    from .resize import check_number
    from .messages import iter_vision_items
    from .vision_process import fetch_one, assemble

    check_number("image_patch_size", image_patch_size, integer=True)
    items = iter_vision_items(conversations)
    _policy.check_item_count(len(items))
    jobs = [
        (lambda item=item: fetch_one(item, image_patch_size, return_video_metadata, frames_patch_grid))
        for item in items
    ]
    results = await _gather_in_order(jobs)
    return assemble(results, return_video_kwargs, return_video_metadata)


async def afetch_image(ele: dict, image_patch_size: int = 14):
    """``fetch_image`` for asyncio."""
    from .image import fetch_image

    return await _in_thread(lambda: fetch_image(ele, image_patch_size))


async def afetch_video(ele: dict, image_patch_size: int = 14, return_video_sample_fps: bool = False,
                       return_video_metadata: bool = False, **options: Any):
    """``fetch_video`` for asyncio (same keyword options: backend, timeout, output_dtype, ...)."""

    def job() -> Any:
        from .video import fetch_video

        return fetch_video(ele, image_patch_size, return_video_sample_fps, return_video_metadata, **options)

    return await _in_thread(job)

