"""The asyncio API against a slow loopback server: same results as the sync functions,
overlapping calls, a responsive event loop, prompt cancellation that stops the work, safe
mode and the media cache through contextvars (issue 13, item 4)."""

from __future__ import annotations

import asyncio
import glob
import io
import os
import subprocess
import tempfile
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import vlutils
from _video_helpers import fixture
from vlutils import cache as vcache
from vlutils.errors import UnsafeSourceError


def _png(seed: int, size=(160, 120)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _async_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("vlutils-async", "vlutils-video"))]


def _wait_no_threads(limit: float = 3.0) -> float:
    start = time.monotonic()
    while _async_threads() and time.monotonic() - start < limit:
        time.sleep(0.02)
    assert not _async_threads(), _async_threads()
    return time.monotonic() - start


async def _ticker(stop: asyncio.Event, gaps: list[float], every: float = 0.01) -> None:
    last = time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(every)
        now = time.monotonic()
        gaps.append(now - last - every)
        last = now


def test_same_results_as_sync(tmp_path, http_server):
    (http_server.root / "async_same.png").write_bytes(_png(1))
    frames = []
    for i in range(3):
        frames.append(str(tmp_path / f"f{i}.png"))
        open(frames[-1], "wb").write(_png(10 + i, (64, 48)))
    messages = [{"role": "user", "content": [
        {"type": "image", "image": http_server.url("async_same.png")},
        {"type": "video", "video": fixture("h264_320x240_30fps.mp4"), "nframes": 4},
        {"type": "image", "url": "fixtures/demo/landscape.jpg"},
        {"type": "video", "video": frames, "timestamps": [0.0, 0.4, 1.1]},
    ]}]
    for kwargs in ({}, {"return_video_kwargs": True}, {"return_video_kwargs": True, "return_video_metadata": True}):
        expected = vlutils.process_vision_info(messages, **kwargs)
        got = asyncio.run(vlutils.aprocess_vision_info(messages, **kwargs))
        assert len(got) == len(expected)
        for a, b in zip(got[0], expected[0]):
            assert np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(got[1], expected[1]):
            if isinstance(a, tuple):
                assert dict(a[1]) == dict(b[1])
                a, b = a[0], b[0]
            assert torch.equal(a, b)
        if len(got) == 3:
            assert got[2] == expected[2]
    image = asyncio.run(vlutils.afetch_image({"image": "fixtures/demo/landscape.jpg", "max_pixels": 50000}))
    assert np.array_equal(np.asarray(image), np.asarray(vlutils.fetch_image({"image": "fixtures/demo/landscape.jpg",
                                                                             "max_pixels": 50000})))
    (video, md), fps = asyncio.run(vlutils.afetch_video({"video": fixture("vp9_30fps.webm")}, 14, True, True))
    (ref, ref_md), ref_fps = vlutils.fetch_video({"video": fixture("vp9_30fps.webm")}, 14, True, True)
    assert torch.equal(video, ref) and dict(md) == dict(ref_md) and fps == ref_fps
    _wait_no_threads()


def test_messages_without_media():
    messages = [{"role": "user", "content": "Hello"}]
    assert asyncio.run(vlutils.aprocess_vision_info(messages, return_video_kwargs=True)) == \
        vlutils.process_vision_info(messages, return_video_kwargs=True)


def test_errors_are_the_sync_ones():
    messages = [{"role": "user", "content": [{"type": "image", "image": "/no/such/file.png"}]}]
    with pytest.raises(vlutils.errors.SourceNotFoundError, match="message 0, item 0"):
        asyncio.run(vlutils.aprocess_vision_info(messages))


def test_concurrent_calls_overlap_and_keep_the_loop_responsive(http_server):
    """Six calls whose images each take ``delay`` s to arrive: run one after another they take
    over 6 * delay s; overlapped, about delay s plus the (load-dependent) decoding. The limits
    leave that decoding several seconds of headroom on a busy machine and still catch serial
    calls (>= 6 s) and a loop blocked by a fetch (>= delay s)."""
    delay = 1.0
    urls = [http_server.route(f"/async_slow_{i}.png", body=_png(20 + i), delay=delay) for i in range(6)]

    async def main():
        stop, gaps = asyncio.Event(), []
        ticker = asyncio.create_task(_ticker(stop, gaps))
        start = time.monotonic()
        results = await asyncio.gather(*(
            vlutils.aprocess_vision_info([{"role": "user", "content": [
                {"type": "image", "image": url},
                {"type": "video", "video": fixture("h264_320x240_30fps.mp4"), "fps": 4.0},
            ]}])
            for url in urls
        ))
        elapsed = time.monotonic() - start
        stop.set()
        await ticker
        return results, elapsed, gaps

    results, elapsed, gaps = asyncio.run(main())
    assert len(results) == 6 and all(len(r[0]) == 1 and len(r[1]) == 1 for r in results)
    assert elapsed < 6 * delay, f"calls did not overlap: {elapsed:.2f}s"
    assert max(gaps) < delay / 2, f"event loop blocked for {max(gaps):.3f}s"
    _wait_no_threads()


def test_in_flight_items_are_bounded(http_server, monkeypatch):
    from vlutils import aio

    state = {"now": 0, "peak": 0}
    lock = threading.Lock()
    data = _png(30)

    def handler(h):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.3)
        with lock:
            state["now"] -= 1
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    url = http_server.handle("/async_bounded.png", handler)
    monkeypatch.setattr(aio, "MAX_FETCH_WORKERS", 3)

    async def main():
        return await asyncio.gather(*(vlutils.afetch_image({"image": f"{url}?{i}"}) for i in range(9)))

    assert len(asyncio.run(main())) == 9
    assert state["peak"] == 3
    _wait_no_threads()


def test_cancel_stops_a_download(http_server):
    sent = {"bytes": 0, "ended": None}

    def trickle(h):  # 64 KB every 0.1 s: ~4 s for the whole body
        h.send_response(200)
        h.send_header("Content-Length", str(40 * 65536))
        h.end_headers()
        try:
            for _ in range(40):
                h.wfile.write(b"\0" * 65536)
                h.wfile.flush()
                sent["bytes"] += 65536
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        sent["ended"] = time.monotonic()

    url = http_server.handle("/async_trickle.mp4", trickle)
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "vlutils-*")))

    async def main():
        task = asyncio.create_task(vlutils.aprocess_vision_info(
            [{"role": "user", "content": [{"type": "video", "video": url}]}]))
        await asyncio.sleep(0.5)
        task.cancel()
        start = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - start

    assert asyncio.run(main()) < 0.25  # released at once, not when the download ends
    cancelled_at = time.monotonic()
    _wait_no_threads(2.0)
    assert time.monotonic() - cancelled_at < 1.0  # the download thread stopped at its next chunk
    deadline = time.monotonic() + 3
    while sent["ended"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sent["bytes"] < 40 * 65536  # the server saw the client go away before the end
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "vlutils-*"))) == before


def test_cancel_stops_a_decode(tmp_path):
    path = tmp_path / "long.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=480x360:rate=30:duration=8",
         "-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-pix_fmt", "yuv420p", str(path)],
        check=True, timeout=120,
    )
    ele = {"video": str(path), "fps": 30.0, "max_frames": 300, "max_pixels": 480 * 360, "total_pixels": 10**9}
    vlutils.fetch_video(dict(ele), output_dtype=torch.uint8)  # warm: first-call costs are not the decode
    start = time.monotonic()
    vlutils.fetch_video(dict(ele), output_dtype=torch.uint8)
    full = time.monotonic() - start

    async def main(after: float):
        task = asyncio.create_task(vlutils.afetch_video(dict(ele), output_dtype=torch.uint8))
        await asyncio.sleep(after)
        if task.done():  # the machine got faster than the timed run: not the case under test
            await task
            return None
        task.cancel()
        t0 = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - t0

    # Cancel 15% into the decode; if load changed so much that it already finished, try earlier.
    for fraction in (0.15, 0.05, 0.01):
        waited = asyncio.run(main(full * fraction))
        if waited is not None:
            break
        _wait_no_threads(full)
    assert waited is not None, f"every decode finished before its cancel ({full:.2f}s timed)"
    assert waited < 0.25  # the caller is released at once, not when the decode ends
    stopped_after = _wait_no_threads(full)
    assert stopped_after < max(0.5, full * 0.5), f"decode went on {stopped_after:.2f}s of {full:.2f}s"


def test_safe_mode_and_cache_reach_the_threads(tmp_path, http_server):
    path = tmp_path / "a.png"
    path.write_bytes(_png(40))
    messages = [{"role": "user", "content": [{"type": "image", "image": str(path)}]}]

    async def refused():
        with vlutils.policy.use(vlutils.SafetyPolicy(allowed_roots=[str(tmp_path / "other")])):
            await vlutils.aprocess_vision_info(messages)

    with pytest.raises(UnsafeSourceError):
        asyncio.run(refused())

    async def allowed():
        with vlutils.policy.use(vlutils.SafetyPolicy(allowed_roots=[str(tmp_path)])):
            return await vlutils.aprocess_vision_info(messages)

    assert len(asyncio.run(allowed())[0]) == 1

    url = http_server.route("/async_cached.png", body=_png(41), delay=0.2)
    cache = vlutils.MediaCache(max_bytes=64 * 2**20)

    async def cached():
        with vcache.use(cache):
            return await asyncio.gather(*(vlutils.afetch_image({"image": url}) for _ in range(5)))

    images = asyncio.run(cached())
    assert http_server.requests["/async_cached.png"] == 1 and len(images) == 5
    assert cache.stats()["hits"] == 4


def test_cancel_while_the_server_has_not_answered(http_server):
    """A request waiting for a slow server's headers stops at the cancel (its socket is shut
    down), not when the server answers or at the read timeout."""
    url = http_server.route("/async_silent_for_long.png", body=_png(50), delay=8.0)

    async def main():
        task = asyncio.create_task(vlutils.afetch_image({"image": url}))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    start = time.monotonic()
    asyncio.run(main())
    _wait_no_threads(5.0)
    assert time.monotonic() - start < 5.0  # the server answers after 8 s: headroom for a loaded machine
