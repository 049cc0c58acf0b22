"""Resource safety: memory stays flat, temporary files and descriptors are released,
concurrent calls agree, and DataLoader workers (fork and spawn) report bad samples
as VisionInputError with their message.

Bounds (stated in the README): after a warm-up, 500 image calls grow RSS by less than
``IMAGE_RSS_BOUND`` and 100 video decodes by less than ``VIDEO_RSS_BOUND``; open file
descriptors, temporary ``vlutils-*`` files and live threads return to their starting
counts. Run alone: ``.venv/bin/python -m pytest tests/test_resources.py -q``.
"""

from __future__ import annotations

import base64
import ctypes
import gc
import io
import logging
import multiprocessing
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import torch
from PIL import Image

import vlutils
import vlutils.policy
from vlutils.errors import DecodeError, FetchError, VisionInputError

from _faulty_server import FaultyServer, answer

ROOT = Path(__file__).resolve().parent.parent
BAD = ROOT / "fixtures" / "bad"
OK_VIDEO = BAD / "ok_video.mp4"
MiB = 2**20
IMAGE_RSS_BOUND = 16 * MiB
VIDEO_RSS_BOUND = 16 * MiB

logger = logging.getLogger(__name__)

try:
    from vlutils.video import fetch_video

    HAVE_VIDEO = True
except ImportError:
    HAVE_VIDEO = False
needs_video = pytest.mark.skipif(not HAVE_VIDEO, reason="vlutils.video not available yet")


def jpeg_bytes(size=(256, 192), seed=0) -> bytes:
    img = Image.new("RGB", size)
    img.putdata([((x * 3 + seed) % 256, (y * 5) % 256, (x ^ y) % 256) for y in range(size[1]) for x in range(size[0])])
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def rss() -> int:
    """Resident memory after a GC and, on glibc, after returning freed heap pages to the
    OS (malloc_trim): without it allocator noise swings RSS by +-15 MiB between
    identical calls, which would hide a real leak or fail a clean run."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    return psutil.Process().memory_info().rss


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def msg(*items: dict) -> list[dict]:
    return [{"role": "user", "content": [*items, {"type": "text", "text": "?"}]}]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    paths = []
    for i in range(4):
        path = root / f"img{i}.jpg"
        path.write_bytes(jpeg_bytes(seed=i))
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def server():
    with FaultyServer(keep_alive=True) as srv:
        srv.route("/a.jpg", answer(body=jpeg_bytes(seed=7), content_type="image/jpeg"))
        srv.route("/b.jpg", answer(body=jpeg_bytes(seed=8), content_type="image/jpeg"))
        srv.route("/clip.mp4", answer(body=OK_VIDEO.read_bytes(), content_type="video/mp4"))
        srv.route("/cut.mp4", answer(body=OK_VIDEO.read_bytes()[:3000], content_type="video/mp4",
                                     content_length=OK_VIDEO.stat().st_size))
        srv.route("/500", answer(500, b"x", "text/plain"))
        yield srv


@pytest.fixture
def fast_http(monkeypatch):
    monkeypatch.setenv("VLUTILS_HTTP_TIMEOUT", "2")
    monkeypatch.setenv("VLUTILS_HTTP_RETRIES", "0")


# ------------------------------------------------------------------------ memory


def test_rss_flat_over_500_images(media):
    data = jpeg_bytes(seed=3)
    uri = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    bad = str(BAD / "img_truncated_half.jpg")
    inputs = [{"image": media[0]}, {"image": data}, {"image": uri}, {"image": bad}]

    def call(i: int) -> None:
        try:
            vlutils.process_vision_info(msg(inputs[i % len(inputs)]))
        except DecodeError:
            pass

    for i in range(50):  # warm-up: allocator pools, codec tables, thread-locals
        call(i)
    before = rss()
    for i in range(500):
        call(i)
    grown = rss() - before
    logger.info("500 image calls: RSS grew %.1f MiB", grown / MiB)
    assert grown < IMAGE_RSS_BOUND, f"RSS grew {grown / MiB:.1f} MiB over 500 image calls"


@needs_video
def test_rss_flat_over_100_video_decodes():
    sources = [{"video": str(OK_VIDEO)}, {"video": OK_VIDEO.read_bytes()}, {"video": str(BAD / "vid_text.mp4")}]

    def call(i: int) -> None:
        try:
            vlutils.process_vision_info(msg(sources[i % len(sources)]))
        except VisionInputError:
            pass

    for i in range(20):
        call(i)
    before = rss()
    for i in range(100):
        call(i)
    grown = rss() - before
    logger.info("100 video calls: RSS grew %.1f MiB", grown / MiB)
    assert grown < VIDEO_RSS_BOUND, f"RSS grew {grown / MiB:.1f} MiB over 100 video decodes"


# ----------------------------------------------------- temporary files and fds


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Point tempfile at an empty folder so that leftovers are ours."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@needs_video
def test_temporary_files_always_removed(private_tmp, server, fast_http):
    data = OK_VIDEO.read_bytes()
    cases = [
        ({"video": data}, None),
        ({"video": "data:video/mp4;base64," + base64.b64encode(data).decode()}, None),
        ({"video": server.url("/clip.mp4")}, None),
        ({"video": BAD.joinpath("vid_noise_middle.mp4").read_bytes()}, VisionInputError),
        ({"video": BAD.joinpath("vid_text.mp4").read_bytes()}, VisionInputError),
        ({"video": server.url("/cut.mp4")}, FetchError),  # connection ends mid-body
        ({"video": server.url("/500")}, FetchError),
    ]
    for item, error in cases:
        if error is None:
            vlutils.process_vision_info(msg(item))
        else:
            try:
                vlutils.process_vision_info(msg(item))
            except error:
                pass
        left = sorted(p.name for p in private_tmp.iterdir())
        assert left == [], f"{str(item)[:60]} left {left}"
    # a decode that times out must remove its file too
    from vlutils.errors import DecodeTimeoutError

    with pytest.raises(DecodeTimeoutError):
        fetch_video({"video": data}, timeout=1e-6)
    deadline = time.monotonic() + 5
    while list(private_tmp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(private_tmp.iterdir()) == []


def test_no_descriptor_leaks(media, server, fast_http):
    """Files, sockets and decoder handles are closed, good inputs or bad. HTTP uses a
    keep-alive server, so pooled connections of finished worker threads would show."""
    items = [
        {"image": media[1]},
        {"image": str(BAD / "img_truncated_half.png")},
        {"image": "file://" + media[2]},
        {"image": server.url("/a.jpg")},
        {"image": server.url("/500")},
    ]
    if HAVE_VIDEO:
        items += [{"video": str(OK_VIDEO)}, {"video": str(BAD / "vid_truncated_half.mp4")},
                  {"video": server.url("/clip.mp4")}]

    def round_trip() -> None:
        for item in items:
            try:
                vlutils.process_vision_info(msg(item))
            except VisionInputError:
                pass
        vlutils.process_vision_info(msg({"image": server.url("/a.jpg")}, {"image": server.url("/b.jpg")},
                                        {"image": media[0]}))

    round_trip()  # warm-up: the calling thread's HTTP session keeps one pooled connection
    before = open_fds()
    for _ in range(10):
        round_trip()
    # The fetch pool shuts down without waiting, so its last threads may still be closing their sessions:
    # a leak is what stays open after they are gone, not what a thread is still releasing.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(t.name.startswith("vlutils-fetch") for t in threading.enumerate()):
        time.sleep(0.05)
    gc.collect()
    after = open_fds()
    leaked = {}
    for fd in after - before:
        try:  # a descriptor may close between the listing and the readlink
            leaked[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            pass
    assert len(leaked) <= 1, f"descriptors leaked over 10 rounds: {leaked}"


# --------------------------------------------------------------- decode timeouts


@needs_video
@pytest.mark.parametrize("backend", ["pyav", "decord", "torchcodec", "torchvision"])
def test_decode_timeout_leaves_nothing_running(backend):
    """fixtures/bad/slow_1080p.mp4 is 25 KB but costs ~20 s with fps=30. Stopped at
    0.5 s, it must raise DecodeTimeoutError promptly and leave no decode thread, no
    child process and no busy CPU behind (decord runs in a killable child)."""
    from vlutils.errors import DecodeTimeoutError

    pytest.importorskip(backend if backend != "pyav" else "av")
    fetch_video({"video": str(OK_VIDEO)}, backend=backend)  # warm-up: first use imports the backend
    proc = psutil.Process()
    start = time.monotonic()
    with pytest.raises(DecodeTimeoutError, match="longer than 0.5s"):
        fetch_video({"video": str(BAD / "slow_1080p.mp4"), "fps": 30}, backend=backend, timeout=0.5)
    assert time.monotonic() - start < 0.5 + 6  # the whole decode costs ~20 s; headroom for a loaded machine
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        busy = [t.name for t in threading.enumerate() if t.name.startswith("vlutils-video")]
        children = [c for c in proc.children(recursive=True) if _is_decoder(c)]  # not session servers
        if not busy and not children:
            break
        time.sleep(0.05)
    assert not busy and not children, (busy, children)
    # The exact-resize plan for a new frame size may still be compiling in its one background thread: bounded,
    # one-time work per size pair that later calls reuse, not decoding. Let it finish before measuring.
    planner_deadline = time.monotonic() + 60
    while time.monotonic() < planner_deadline and any(
            t.name == "vlutils-resize-plan" for t in threading.enumerate()):
        time.sleep(0.1)
    assert proc.cpu_percent(interval=0.5) < 50, "something is still decoding"


def _is_decoder(child) -> bool:
    """A running decoder child of ours (decord's); session fixtures start other children."""
    try:
        return child.status() != psutil.STATUS_ZOMBIE and "_decord_child" in " ".join(child.cmdline())
    except psutil.Error:
        return False


# ------------------------------------------------------------------ concurrency


def fingerprint(result) -> list:
    images, videos = result[:2]
    out = [("img", im.size, im.tobytes()) for im in images or []]
    out += [("vid", tuple(v.shape), v.to(torch.float64).sum().item()) for v in videos or []]
    return out


def test_many_threads_at_once_agree(media, server):
    threads_before = threading.active_count()
    torch_threads = torch.get_num_threads()
    items = [{"image": p} for p in media] + [{"image": server.url("/a.jpg"), "max_pixels": 128 * 28 * 28}]
    if HAVE_VIDEO:
        items.append({"video": str(OK_VIDEO), "nframes": 4})
    conversation = msg(*items)
    expected = fingerprint(vlutils.process_vision_info(conversation))

    def call(i: int):
        # odd calls use a bad conversation: failures must not disturb the others
        if i % 5 == 4:
            try:
                vlutils.process_vision_info(msg({"image": str(BAD / "img_text.png")}))
            except DecodeError:
                return "error"
        return fingerprint(vlutils.process_vision_info(conversation))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, range(40)))
    assert all(r == expected for r in results if r != "error")
    assert results.count("error") == 8
    assert torch.get_num_threads() == torch_threads, "a call changed torch's thread count for the caller"
    deadline = time.monotonic() + 5
    while threading.active_count() > threads_before + 1 and time.monotonic() < deadline:  # +1: keep-alive handler
        time.sleep(0.05)
    assert threading.active_count() <= threads_before + 1, [t.name for t in threading.enumerate()]




def test_shared_lazy_pil_image_in_several_items():
    """Image.open() decodes on first use. The same lazily opened image in several items
    of one message (duplicates are common) is fetched by several pool threads at once:
    every item must still give the same image, as the sequential reference does."""
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 255, (1200, 1600, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    expected = vlutils.process_vision_info(msg({"image": Image.open(io.BytesIO(data))}))[0][0].tobytes()
    for _ in range(10):
        lazy = Image.open(io.BytesIO(data))
        images, _ = vlutils.process_vision_info(msg(*[{"image": lazy} for _ in range(8)]))
        assert all(image.tobytes() == expected for image in images)
    if HAVE_VIDEO:  # a frame list is fetched by a pool too
        _, videos = vlutils.process_vision_info(msg({"video": [Image.open(io.BytesIO(data))] * 8}))
        assert all(torch.equal(frame, videos[0][0]) for frame in videos[0])


def test_truncated_lazy_pil_image_is_a_decode_error():
    lazy = Image.open(BAD / "img_truncated_half.jpg")
    with pytest.raises(DecodeError, match="message 0, item 0"):
        vlutils.process_vision_info(msg({"image": lazy}))


# ------------------------------------------------------------------- DataLoader


class VisionDataset(torch.utils.data.Dataset):
    """Sample i is one image message; ``bad`` indices point at a corrupt file."""

    def __init__(self, paths: list[str], bad: set[int]):
        self.paths, self.bad = paths, bad

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = str(BAD / "img_truncated_half.png") if i in self.bad else self.paths[i]
        images, _ = vlutils.process_vision_info(msg({"image": path}))
        safe_mode = vlutils.policy.current() is not None  # did the environment reach this worker?
        return torch.from_numpy(__import__("numpy").asarray(images[0])).permute(2, 0, 1), safe_mode


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_dataloader_workers(media, start_method, monkeypatch):
    """Eight samples, the last one corrupt, two workers: the three good batches arrive
    (in order) and the fourth raises DecodeError in the main process with the worker's
    message. Safe mode set through the environment reaches the workers (spawn does not
    inherit ``set_policy``, but it does inherit the environment). One loader per start
    method keeps spawn's interpreter start-ups to two."""
    if start_method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{start_method} not available")
    monkeypatch.setenv("VLUTILS_SAFE_MODE", "1")
    monkeypatch.setenv("VLUTILS_ALLOWED_ROOTS", os.pathsep.join([os.path.dirname(media[0]), str(BAD)]))
    loader = torch.utils.data.DataLoader(VisionDataset(media * 2, {7}), batch_size=2, num_workers=2,
                                         multiprocessing_context=multiprocessing.get_context(start_method))
    batches, error = [], None
    iterator = iter(loader)
    try:
        for batch in iterator:
            batches.append(batch)
    except VisionInputError as exc:
        error = f"{type(exc).__name__}: {exc}"
        assert isinstance(exc, DecodeError), error
    finally:
        iterator._shutdown_workers()  # now, not at garbage collection (which stalls the next test)
        del iterator
    assert error is not None, "the corrupt sample did not raise"
    assert len(batches) == 3 and all(b.shape[:2] == (2, 3) for b, _ in batches)
    assert all(b.shape[-2] % 28 == 0 and b.shape[-1] % 28 == 0 for b, _ in batches)
    assert all(flags.all() for _, flags in batches), "safe mode from the environment did not reach the workers"
    assert "img_truncated_half.png" in error and "message 0, item 0" in error, error


# ---------------------------------------------------------------------- output


QUIET_SCRIPT = r"""
import os, sys
import vlutils, vlutils.policy
try:
    import vlutils.video
except ImportError:
    pass
from vlutils.errors import VisionInputError
bad = os.path.join(sys.argv[1], "fixtures", "bad")
for name in sorted(os.listdir(bad)):
    if name.startswith("slow_"):
        continue
    kind = "video" if name.startswith(("vid_", "ok_video")) else "image"
    try:
        vlutils.process_vision_info([{"role": "user", "content": [{kind: os.path.join(bad, name)}]}])
    except VisionInputError:
        pass
"""


def test_library_prints_nothing():
    """Import and run the whole corpus in a fresh interpreter with no logging set up:
    stdout stays empty (fd level, so C libraries count too) and so does stderr: the
    package's NullHandler keeps Python's last-resort handler quiet. Pillow's own decoder
    warnings (corrupt EXIF in a TIFF) are left to the caller's warning filters, as
    silencing them would need the process-global, thread-unsafe catch_warnings: the child
    filters them the way a user would."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-W", "ignore::UserWarning:PIL.TiffImagePlugin", "-c", QUIET_SCRIPT, str(ROOT)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "", proc.stdout[:500]
    assert proc.stderr == "", proc.stderr[:500]
