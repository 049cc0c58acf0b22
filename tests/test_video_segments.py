"""Parallel keyframe-segment decoding (pyav): every delivered frame equals the same frame of
a sequential decode of every frame (the oracle, also where decord is wrong: open GOP),
for 1, 2, 3 and 8 workers and random frame selections; the plan covers exactly the
wanted frames; the MP4 sample-table index equals a packet scan; the thread budget."""

from __future__ import annotations

import multiprocessing
import random
import threading
import time

import numpy as np
import pytest
import torch

from _video_helpers import VIDEO_DIR, fixture
from vlutils.errors import DecodeError, InvalidOptionError
from vlutils.video import fetch_video
from vlutils.video.backends.pyav import PyAVReader
from vlutils.video.backends.pyav_index import read_frame_index
from vlutils.video.segments import PIECES_PER_WORKER, keyframe_before, plan_runs, plan_segments
from vlutils.video.threads import BUDGET, THREADS_ENV, ThreadBudget, in_worker_process, video_threads

VIDEOS = sorted(p.name for p in VIDEO_DIR.iterdir() if p.suffix != ".m4a")
OPEN_GOP = ["h264_open_gop.mp4", "hevc_open_gop.mp4", "h264_open_gop.mkv"]
WORKERS = [1, 2, 3, 8]

_ORACLE: dict[str, list[np.ndarray]] = {}


def oracle(name: str) -> list[np.ndarray]:
    """Every frame, decoded sequentially from the start with one thread, display-oriented."""
    if name not in _ORACLE:
        import av

        with av.open(fixture(name)) as container:
            stream = container.streams.best("video")
            stream.codec_context.thread_count = 1
            frames = []
            for frame in container.decode(stream):
                array = frame.to_ndarray(format="rgb24")
                turns = int(round((frame.rotation or 0) / 90.0)) % 4
                frames.append(np.ascontiguousarray(np.rot90(array, k=turns)) if turns else array)
        _ORACLE[name] = frames
    return _ORACLE[name]


class RecordingSink:
    """Keeps the raw frames a reader delivers (no resize), from any thread."""

    fast_resize = False

    def __init__(self):
        self.frames: dict[int, np.ndarray] = {}
        self.lock = threading.Lock()

    def target_size(self, height, width):
        return height, width

    def put(self, index, frame):
        with self.lock:
            self.frames[index] = frame.copy()


def read_raw(name: str, wanted: list[int], workers: int, monkeypatch) -> tuple[dict, PyAVReader]:
    monkeypatch.setenv(THREADS_ENV, str(workers))
    reader = PyAVReader(fixture(name), name)
    sink = RecordingSink()
    reader.read(wanted, sink, lambda: False)
    return sink.frames, reader


def selections(total: int, rng: random.Random) -> list[list[int]]:
    """Every frame, a sparse evenly spaced set, and a random subset of random size."""
    picks = [list(range(total)), sorted({round(i * (total - 1) / 7) for i in range(8)})]
    picks.append(sorted(rng.sample(range(total), rng.randint(1, total))))
    return picks


@pytest.mark.parametrize("name", VIDEOS)
def test_frames_equal_a_sequential_decode(name, monkeypatch):
    frames = oracle(name)
    rng = random.Random(name)
    for workers in WORKERS:
        for wanted in selections(len(frames), rng):
            got, reader = read_raw(name, wanted, workers, monkeypatch)
            assert sorted(got) == wanted, (workers, wanted)
            bad = [i for i in wanted if not np.array_equal(got[i], frames[i])]
            assert not bad, f"{name}, {workers} workers: frames {bad[:10]} differ from a sequential decode"


@pytest.mark.parametrize("name", ["h264_long_gop.mp4", "h264_open_gop.mp4", "hevc_open_gop.mp4", "vp9_30fps.webm",
                                  "h264_open_gop.mkv"])
def test_several_decoders_really_run(name, monkeypatch):
    total = len(oracle(name))
    _, reader = read_raw(name, list(range(0, total, 3)), 3, monkeypatch)
    assert reader.workers >= 2 and reader.seeks >= 1


def test_fetch_video_identical_for_every_worker_count(monkeypatch):
    """End to end with random sampling options: the output tensor does not depend on the
    number of workers (the reference comparison itself is in test_video_reference.py)."""
    rng = random.Random(14)
    for name in ["h264_long_gop.mp4", "h264_open_gop.mp4", "hevc_open_gop.mp4", "h264_vfr.mp4", "h264_rotate90.mp4",
                 "vp9_30fps.webm", "mpeg4_25fps.avi", "av1_30fps.mkv"]:
        total = len(oracle(name))
        ele = {"video": fixture(name), "max_pixels": rng.choice([128 * 28 * 28, 192 * 28 * 28])}
        if rng.random() < 0.5:
            ele["nframes"] = rng.randrange(2, total + 1, 2)
        else:
            ele["fps"] = rng.choice([1.0, 3.0, 7.5])
        if rng.random() < 0.5:
            ele["video_start"], ele["video_end"] = 0.3, total / 30 * 0.8
            ele.pop("nframes", None)
        outputs = []
        for workers in WORKERS:
            monkeypatch.setenv(THREADS_ENV, str(workers))
            outputs.append(fetch_video(dict(ele), output_dtype=torch.uint8))
        for workers, out in zip(WORKERS[1:], outputs[1:]):
            assert torch.equal(out, outputs[0]), (name, ele, workers)


# ------------------------------------------------------------------------ plan


def test_plan_covers_wanted_frames_from_keyframes():
    rng = random.Random(3)
    for _ in range(300):
        total = rng.randrange(1, 400)
        keyframes = sorted({0} | {rng.randrange(total) for _ in range(rng.randrange(0, 12))})
        wanted = sorted(rng.sample(range(total), rng.randrange(1, min(total, 60) + 1)))
        workers = rng.choice([1, 2, 3, 8])
        segments = plan_segments(wanted, keyframes, workers)
        assert [f for s in segments for f in s.frames] == wanted  # each once, in order
        for seg in segments:
            assert seg.start in keyframes and seg.start <= seg.frames[0]
            assert seg.start >= keyframe_before(keyframes, seg.frames[0]) - 0  # never before its own run
        if workers == 1:
            assert segments == plan_runs(wanted, keyframes)
        # splitting adds no decoding work beyond one forward-seeking decoder's
        runs = plan_runs(wanted, keyframes)
        assert sum(s.cost for s in segments) <= sum(r.cost for r in runs)


def test_plan_splits_long_runs_for_workers():
    keyframes = list(range(0, 18000, 300))
    wanted = list(range(18000))  # every frame: one forward run
    assert len(plan_segments(wanted, keyframes, 1)) == 1
    segments = plan_segments(wanted, keyframes, 2)
    assert PIECES_PER_WORKER <= len(segments) <= 2 * PIECES_PER_WORKER  # pieces end on keyframes
    costs = [s.cost for s in segments]
    assert max(costs) <= 2 * min(costs) + 300


# ----------------------------------------------------------------------- index


@pytest.mark.parametrize("name", VIDEOS)
def test_sample_table_index_equals_packet_scan(name):
    fast = read_frame_index(fixture(name), name)
    scan = read_frame_index(fixture(name), name, use_sample_tables=False)
    assert fast.method == ("sample-table" if name.endswith(".mp4") else "packets")
    assert scan.method == "packets"
    assert fast.probe == scan.probe.__class__(**{**scan.probe.__dict__, "extra": fast.probe.extra})
    assert fast.sorted_pts == scan.sorted_pts


def test_fragmented_mp4_is_scanned(tmp_path):
    """Fragmented MP4 keeps its samples in moof boxes the sample tables do not list."""
    import sys

    sys.path.insert(0, str(VIDEO_DIR.parent.parent / "scripts"))
    from make_video_fixtures import encode

    path = tmp_path / "frag.mp4"
    encode(path, codec="libx264", width=128, height=96, nframes=60, options={"g": "15"},
           container_options={"movflags": "frag_keyframe+empty_moov"})
    fast = read_frame_index(str(path), "frag.mp4")
    scan = read_frame_index(str(path), "frag.mp4", use_sample_tables=False)
    assert fast.method == "packets" and fast.probe.total_frames == scan.probe.total_frames == 60
    assert fast.probe.keyframes == scan.probe.keyframes and len(fast.probe.keyframes) > 1


def test_truncated_mp4_falls_back_to_the_scan(tmp_path):
    data = open(fixture("h264_faststart_25fps.mp4"), "rb").read()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) * 2 // 3])  # moov first, samples cut off
    with pytest.raises(DecodeError, match="truncated"):
        read_frame_index(str(path), "cut.mp4")


# --------------------------------------------------------------------- threads


def test_thread_setting(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "3")
    assert video_threads() == 3
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(InvalidOptionError, match=THREADS_ENV):
            video_threads()
    monkeypatch.delenv(THREADS_ENV)
    import os

    assert video_threads() == len(os.sched_getaffinity(0))
    assert not in_worker_process()


def _child_threads(queue):
    queue.put((in_worker_process(), video_threads()))


def test_worker_processes_default_to_one_thread(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_threads, args=(queue,))
    proc.start()
    result = queue.get(timeout=30)
    proc.join(30)
    assert result == (True, 1)


def test_budget_is_shared(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "4")
    budget = ThreadBudget()
    assert budget.acquire(3) == 3
    assert budget.acquire(3) == 1  # what is left
    assert budget.acquire(3) == 1  # never zero
    budget.release(5)
    assert budget.in_use == 0 and budget.acquire(8) == 4


def test_failing_worker_stops_the_others(monkeypatch):
    """An error in one worker is raised promptly; every worker thread ends."""
    monkeypatch.setenv(THREADS_ENV, "3")
    before = {t.ident for t in threading.enumerate()}

    class FailingSink(RecordingSink):
        def put(self, index, frame):
            if index >= 150:
                raise DecodeError("injected failure", "x")
            time.sleep(0.01)
            super().put(index, frame)

    reader = PyAVReader(fixture("h264_long_gop.mp4"), "h264_long_gop.mp4")
    start = time.monotonic()
    with pytest.raises(DecodeError, match="injected failure"):
        reader.read(list(range(300)), FailingSink(), lambda: False)
    assert time.monotonic() - start < 5
    assert not ({t.ident for t in threading.enumerate()} - before)
    assert BUDGET.in_use == 0


def test_stop_flag_ends_every_worker(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "3")
    before = {t.ident for t in threading.enumerate()}
    stop = threading.Event()
    sink = RecordingSink()
    put = sink.put
    sink.put = lambda i, f: (put(i, f), stop.set())  # stop after the first frame
    PyAVReader(fixture("h264_long_gop.mp4"), "x").read(list(range(300)), sink, stop.is_set)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and {t.ident for t in threading.enumerate()} - before:
        time.sleep(0.02)
    assert not ({t.ident for t in threading.enumerate()} - before)
    assert len(sink.frames) < 300


def test_stuck_worker_hits_the_time_limit_and_the_others_stop(monkeypatch):
    """One worker blocks (as in a C call that never returns): the call raises
    DecodeTimeoutError at its limit, every other worker ends, and so does the stuck one
    once it returns."""
    from vlutils.errors import DecodeTimeoutError
    from vlutils.video import pipeline

    monkeypatch.setenv(THREADS_ENV, "3")
    release = threading.Event()
    real_store = pipeline._store

    def store(video, slots, frame, fast_resize):
        if slots and slots[0] == 5:
            release.wait(30)  # stuck
        return real_store(video, slots, frame, fast_resize)

    monkeypatch.setattr(pipeline, "_store", store)
    before = {t.ident for t in threading.enumerate()}
    start = time.monotonic()
    with pytest.raises(DecodeTimeoutError, match="longer than 1s"):
        fetch_video({"video": fixture("h264_long_gop.mp4"), "nframes": 40}, timeout=1.0)
    assert time.monotonic() - start < 8  # the worker is stuck for 30 s: headroom for a loaded machine
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and len({t.ident for t in threading.enumerate()} - before) > 1:
        time.sleep(0.02)
    left = [t.name for t in threading.enumerate() if t.ident not in before]
    assert len(left) <= 1, left  # only the stuck worker
    release.set()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and {t.ident for t in threading.enumerate()} - before:
        time.sleep(0.02)
    assert not ({t.ident for t in threading.enumerate()} - before)
    assert BUDGET.in_use == 0
