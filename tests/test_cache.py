"""vlutils.MediaCache: one fetch per repeated source, option-sensitive keys, stale files, the
byte bound, copies, scopes, safe mode before any hit, threads and fork (issue 13, item 5)."""

from __future__ import annotations

import base64
import io
import multiprocessing
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import vlutils
from _video_helpers import fixture
from vlutils import cache as vcache
from vlutils.errors import UnsafeSourceError
from vlutils.video import fetch_video


def _png(seed: int, size=(120, 90)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _serve(http_server, name: str, data: bytes) -> str:
    (http_server.root / name).write_bytes(data)
    return http_server.url(name)


def test_repeats_are_fetched_once(http_server):
    url = _serve(http_server, "cache_once.png", _png(1))
    messages = [{"role": "user", "content": [{"type": "image", "image": url}]}]
    cache = vlutils.MediaCache(max_bytes=64 * 2**20)
    with vcache.use(cache):
        first = vlutils.process_vision_info(messages)[0][0]
        for _ in range(4):
            again = vlutils.process_vision_info(messages)[0][0]
            assert np.array_equal(np.asarray(again), np.asarray(first))
    assert http_server.requests["/cache_once.png"] == 1
    stats = cache.stats()
    assert stats["hits"] == 4 and stats["misses"] == 1 and stats["items"] == 1
    assert stats["bytes"] == first.width * first.height * 3
    # outside the scope nothing is cached
    vlutils.process_vision_info(messages)
    assert http_server.requests["/cache_once.png"] == 2


def test_keys_follow_every_result_changing_option(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(_png(2, (400, 300)))
    cache = vlutils.MediaCache(max_bytes=64 * 2**20)
    with vcache.use(cache):
        base = vlutils.fetch_image({"image": str(path)})
        small = vlutils.fetch_image({"image": str(path), "max_pixels": 100 * 100})
        patch16 = vlutils.fetch_image({"image": str(path)}, image_patch_size=16)
        sized = vlutils.fetch_image({"image": str(path), "resized_height": 56, "resized_width": 112})
        assert len({base.size, small.size, patch16.size, sized.size}) == 4
        assert vlutils.fetch_image({"type": "image", "path": str(path)}).size == base.size  # same source
        v1 = fetch_video({"video": fixture("h264_320x240_30fps.mp4"), "nframes": 4})
        v2 = fetch_video({"video": fixture("h264_320x240_30fps.mp4"), "nframes": 6})
        v3 = fetch_video({"video": fixture("h264_320x240_30fps.mp4"), "nframes": 4}, output_dtype=torch.uint8)
    assert (len(v1), len(v2), v3.dtype) == (4, 6, torch.uint8)
    assert torch.equal(v3.float(), v1)
    assert cache.stats()["misses"] == 7 and cache.stats()["hits"] == 1


def test_changed_file_is_fetched_again(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(_png(3))
    cache = vlutils.MediaCache(max_bytes=64 * 2**20)
    with vcache.use(cache):
        old = np.asarray(vlutils.fetch_image({"image": str(path)}))
        path.write_bytes(_png(4))
        stat = os.stat(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # same size: mtime tells
        new = np.asarray(vlutils.fetch_image({"image": str(path)}))
    assert not np.array_equal(old, new)
    assert np.array_equal(new, np.asarray(vlutils.fetch_image({"image": str(path)})))


def test_data_uris_are_keyed_by_content():
    a = "data:image/png;base64," + base64.b64encode(_png(5)).decode()
    b = "data:image/png;base64," + base64.b64encode(_png(6)).decode()
    cache = vlutils.MediaCache(max_bytes=64 * 2**20)
    with vcache.use(cache):
        ia, ib, ia2 = (vlutils.fetch_image({"image": s}) for s in (a, b, a))
    assert np.array_equal(np.asarray(ia), np.asarray(ia2)) and not np.array_equal(np.asarray(ia), np.asarray(ib))
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 2


def test_lru_within_max_bytes(tmp_path):
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(_png(10 + i, (112, 112)))
    one = 112 * 112 * 3
    cache = vlutils.MediaCache(max_bytes=3 * one)
    with vcache.use(cache):
        for p in paths[:3]:
            vlutils.fetch_image({"image": str(p)})
        vlutils.fetch_image({"image": str(paths[0])})  # now most recently used
        vlutils.fetch_image({"image": str(paths[3])})  # evicts paths[1]
        assert cache.stats() == {**cache.stats(), "items": 3, "bytes": 3 * one, "evictions": 1}
        hits = cache.stats()["hits"]
        vlutils.fetch_image({"image": str(paths[0])})
        assert cache.stats()["hits"] == hits + 1
        vlutils.fetch_image({"image": str(paths[1])})
        assert cache.stats()["hits"] == hits + 1  # it was evicted
    tiny = vlutils.MediaCache(max_bytes=one - 1)  # an item larger than the whole cache is not kept
    with vcache.use(tiny):
        vlutils.fetch_image({"image": str(paths[4])})
    assert tiny.stats()["items"] == 0 and tiny.stats()["bytes"] == 0


def test_callers_get_copies(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(_png(7))
    cache = vlutils.MediaCache(max_bytes=256 * 2**20)
    with vcache.use(cache):
        image = vlutils.fetch_image({"image": str(path)})
        reference = np.asarray(image).copy()
        image.paste((0, 0, 0), (0, 0, image.width, image.height))
        assert np.array_equal(np.asarray(vlutils.fetch_image({"image": str(path)})), reference)
        ele = {"video": fixture("h264_320x240_30fps.mp4"), "nframes": 4}
        (video, md) = fetch_video(ele, return_video_metadata=True)
        expected = video.clone()
        video.zero_()
        md["frames_indices"].append(99)
        (again, md2) = fetch_video(ele, return_video_metadata=True)
        assert torch.equal(again, expected) and 99 not in md2["frames_indices"]


def test_safe_mode_is_checked_before_any_hit(tmp_path, http_server):
    path = tmp_path / "a.png"
    path.write_bytes(_png(8))
    url = _serve(http_server, "cache_safe.png", _png(9))
    cache = vlutils.MediaCache(max_bytes=64 * 2**20)
    with vcache.use(cache):
        vlutils.fetch_image({"image": str(path)})
        vlutils.fetch_image({"image": url})
        strict = vlutils.SafetyPolicy(allowed_roots=[str(tmp_path / "elsewhere")])
        with vlutils.policy.use(strict):
            with pytest.raises(UnsafeSourceError):
                vlutils.fetch_image({"image": str(path)})
            with pytest.raises(UnsafeSourceError):
                vlutils.fetch_image({"image": url})  # loopback address refused
        # a stricter cap: the same source is fetched again under it and refused
        with vlutils.policy.use(vlutils.SafetyPolicy(allowed_roots=[str(tmp_path)], max_pixels=100)):
            with pytest.raises(vlutils.errors.SizeLimitError):
                vlutils.fetch_image({"image": str(path)})
    assert cache.stats()["hits"] == 0


def test_scopes_and_environment(monkeypatch, tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(_png(11))
    monkeypatch.setenv(vcache.ENV_VAR, str(32 * 2**20))
    try:
        env_cache = vcache.current()
        assert isinstance(env_cache, vlutils.MediaCache) and env_cache.max_bytes == 32 * 2**20
        assert vcache.current() is env_cache  # one per process, not one per call
        vlutils.fetch_image({"image": str(path)})
        vlutils.fetch_image({"image": str(path)})
        assert env_cache.stats()["hits"] == 1
        with vcache.use(None):  # off in this scope, whatever the environment says
            assert vcache.current() is None
        mine = vlutils.MediaCache(max_bytes=2**20)
        vlutils.set_cache(mine)
        assert vcache.current() is mine
        vlutils.set_cache(None)  # back to the environment's
        assert vcache.current() is env_cache
    finally:
        vcache.reset_cache()
    monkeypatch.delenv(vcache.ENV_VAR)
    assert vcache.current() is None
    for bad in (-1, float("nan"), float("inf"), "1GB", True):
        with pytest.raises(vlutils.errors.InvalidOptionError):
            vlutils.MediaCache(max_bytes=bad)
    assert vlutils.MediaCache(max_bytes=2e9).max_bytes == 2_000_000_000


def test_threads_share_one_fetch(http_server):
    hits = []

    def slow(handler):
        hits.append(1)
        import time

        time.sleep(0.3)
        data = _png(12)
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    url = http_server.handle("/cache_threads.png", slow)
    cache = vlutils.MediaCache(max_bytes=64 * 2**20)
    results = [None] * 8

    def worker(i):
        with vcache.use(cache):
            results[i] = np.asarray(vlutils.fetch_image({"image": url}))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(hits) == 1
    assert all(np.array_equal(r, results[0]) for r in results)


def _child_stats(cache, queue):
    queue.put(cache.stats())


def test_forked_child_gets_its_own_cache(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(_png(13))
    cache = vlutils.MediaCache(max_bytes=64 * 2**20)
    with vcache.use(cache):
        vlutils.fetch_image({"image": str(path)})
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with cache._lock:  # held by this thread while forking: the child must not inherit it held
        child = ctx.Process(target=_child_stats, args=(cache, queue))
        child.start()
    stats = queue.get(timeout=20)
    child.join(10)
    assert stats["items"] == 0 and stats["hits"] == 0
    assert cache.stats()["items"] == 1


def test_frame_lists_are_cached_by_their_frames_and_times(tmp_path):
    frames = []
    for i in range(3):
        frames.append(str(tmp_path / f"f{i}.png"))
        open(frames[-1], "wb").write(_png(20 + i, (64, 48)))
    cache = vlutils.MediaCache(max_bytes=64 * 2**20)
    with vcache.use(cache):
        (a, md_a), fps_a = fetch_video({"video": frames}, return_video_sample_fps=True, return_video_metadata=True)
        (b, md_b), fps_b = fetch_video({"video": frames}, return_video_sample_fps=True, return_video_metadata=True)
        assert torch.equal(a, b) and dict(md_a) == dict(md_b) and fps_a == fps_b
        assert cache.stats()["hits"] == 1
        timed = fetch_video({"video": frames, "timestamps": [0.0, 1.0, 3.0]}, return_video_sample_fps=True)[1]
        assert timed == 2 / 3 and cache.stats()["misses"] == 2
        fetch_video({"video": frames[:2] + [frames[0]]})
        assert cache.stats()["misses"] == 3


class _Images:
    def __init__(self, path):
        self.path = path

    def __len__(self):
        return 4

    def __getitem__(self, i):
        image = vlutils.fetch_image({"image": self.path})
        stats = vcache.current().stats()
        return np.asarray(image).copy(), stats["hits"], stats["misses"]


def test_dataloader_fork_workers_each_have_their_own_cache(tmp_path):
    from torch.utils.data import DataLoader

    path = tmp_path / "a.png"
    path.write_bytes(_png(14))
    cache = vlutils.MediaCache(max_bytes=64 * 2**20)
    vlutils.set_cache(cache)
    try:
        expected = np.asarray(vlutils.fetch_image({"image": str(path)}))
        loader = DataLoader(_Images(str(path)), batch_size=None, num_workers=2, multiprocessing_context="fork")
        rows = list(loader)
    finally:
        vcache.reset_cache()
    assert all(np.array_equal(image, expected) for image, _, _ in rows)
    # each worker started empty (its first fetch a miss), then hit its own copy
    assert sorted((int(h), int(m)) for _, h, m in rows) == [(0, 1), (0, 1), (1, 1), (1, 1)]
    assert cache.stats()["misses"] == 1 and cache.stats()["hits"] == 0
