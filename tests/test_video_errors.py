"""Bad videos and bad options raise typed VisionInputError subclasses naming the input,
within seconds; a decode that hangs is stopped by the time limit."""

from __future__ import annotations

import contextlib
from unittest import mock
import os
import subprocess
import sys
import threading
import time

import pytest

from _video_helpers import ROOT, backend_or_skip, fixture
from vlutils.errors import (
    BackendUnavailableError,
    DecodeError,
    DecodeTimeoutError,
    FetchTimeoutError,
    InvalidMessageError,
    InvalidOptionError,
    SourceNotFoundError,
    UnsupportedSourceError,
    VisionInputError,
)
from vlutils.video import fetch_video

FAST = 5.0  # seconds: every failure below must be reported quicker than this


@contextlib.contextmanager
def quick():
    start = time.monotonic()
    yield
    elapsed = time.monotonic() - start
    assert elapsed < FAST, f"took {elapsed:.1f}s"


def raises(kind, ele, match=None, **kwargs):
    with quick(), pytest.raises(kind, match=match) as info:
        fetch_video(ele, **kwargs)
    return info.value


def truncated(tmp_path, name, keep):
    data = open(fixture(name), "rb").read()
    path = tmp_path / f"cut_{name}"
    path.write_bytes(data[: int(len(data) * keep)] if keep < 1 else data[: int(keep)])
    return str(path)


@pytest.mark.parametrize(
    "name,keep",
    [
        ("h264_320x240_30fps.mp4", 0.5),  # moov at the end: header gone
        ("h264_faststart_25fps.mp4", 0.5),  # header says 75 frames, half the data
        ("h264_faststart_25fps.mp4", 1024),
        ("mpeg4_25fps.avi", 0.5),
        ("vp9_30fps.webm", 0.5),  # no frame count in webm: duration check
        ("mjpeg_15fps.avi", 0.7),
    ],
)
def test_truncated(tmp_path, name, keep):
    path = truncated(tmp_path, name, keep)
    exc = raises(DecodeError, {"video": path})
    assert os.path.basename(path) in str(exc)


def test_zero_byte_file_and_empty_bytes(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    raises(DecodeError, {"video": str(empty)})
    raises(UnsupportedSourceError, {"video": b""})


def test_not_a_video(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    exc = raises(DecodeError, {"video": str(text)})
    assert "notes.mp4" in str(exc)
    raises(DecodeError, {"video": os.urandom(4096)})


def test_audio_only():
    exc = raises(DecodeError, {"video": fixture("audio_only.m4a")}, match="no video stream")
    assert "audio_only.m4a" in str(exc)


def test_unreadable_sources(tmp_path):
    raises(SourceNotFoundError, {"video": str(tmp_path / "missing.mp4")})
    raises(SourceNotFoundError, {"video": str(tmp_path)})
    raises(InvalidMessageError, {"text": "no video here"})
    raises(InvalidMessageError, {"video_url": {"href": "x"}})
    raises(UnsupportedSourceError, {"video": 12345})
    raises(UnsupportedSourceError, {"video": "ftp://example.com/a.mp4"})


def test_url_that_never_answers(silent_server, monkeypatch):
    monkeypatch.setenv("VLUTILS_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("VLUTILS_HTTP_RETRIES", "0")
    raises(FetchTimeoutError, {"video": silent_server.url + "clip.mp4"})


@pytest.mark.parametrize(
    "options,match",
    [
        ({"nframes": 1}, "nframes"),
        ({"nframes": 92}, "nframes"),
        ({"nframes": 0}, "nframes"),
        ({"fps": 0}, "fps"),
        ({"fps": -2}, "fps"),
        ({"fps": "2"}, "fps"),
        ({"fps": float("nan")}, "fps"),
        ({"fps": 2, "nframes": 4}, "either"),
        ({"min_pixels": -1}, "min_pixels"),
        ({"max_pixels": 1000, "min_pixels": 5000}, "max_pixels"),
        ({"video_start": 2.5, "video_end": 1.0}, "time range"),
        ({"resized_height": 0, "resized_width": 10}, "resized_height"),
    ],
)
def test_bad_options(options, match):
    exc = raises(InvalidOptionError, {"video": fixture("h264_320x240_30fps.mp4"), **options}, match=match)
    assert isinstance(exc, ValueError)


def test_one_frame_video_needs_two_frames():
    raises(InvalidOptionError, {"video": fixture("h264_one_frame.mp4")}, match=r"\[2, 1\]")


def test_frame_lists(tmp_path):
    from PIL import Image

    raises(InvalidMessageError, {"video": []}, match="empty")
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 48), (10, 20, 30)).save(good)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    exc = raises(VisionInputError, {"video": [str(good), str(broken), str(good)]}, match="frame 1 of 3")
    assert "broken.png" in str(exc)
    raises(SourceNotFoundError, {"video": [str(good), str(tmp_path / "nope.png")]}, match="frame 1 of 2")


def test_unknown_and_unavailable_backends(monkeypatch):
    path = fixture("h264_320x240_30fps.mp4")
    monkeypatch.setenv("FORCE_QWENVL_VIDEO_READER", "opencv")
    raises(BackendUnavailableError, {"video": path}, match="opencv")
    monkeypatch.delenv("FORCE_QWENVL_VIDEO_READER")
    raises(BackendUnavailableError, {"video": path}, match="nope", backend="nope")
    # an uninstalled backend: make `import decord` / `import torchcodec` fail for real
    monkeypatch.setitem(sys.modules, "decord", None)
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    for name in ("decord", "torchcodec"):
        monkeypatch.setenv("FORCE_QWENVL_VIDEO_READER", name)
        raises(BackendUnavailableError, {"video": path}, match=f"{name}.*unavailable")


def test_timeout_option_validation(monkeypatch):
    path = fixture("h264_320x240_30fps.mp4")
    monkeypatch.setenv("VLUTILS_VIDEO_TIMEOUT", "soon")
    raises(InvalidOptionError, {"video": path}, match="VLUTILS_VIDEO_TIMEOUT")
    monkeypatch.setenv("VLUTILS_VIDEO_TIMEOUT", "-1")
    raises(InvalidOptionError, {"video": path}, match="timeout")


@contextlib.contextmanager
def hanging_file(tmp_path, name="stuck.mp4"):
    """A FIFO with no writer: opening it blocks inside FFmpeg's C code forever, the way a
    stuck network mount or a decoder bug does. Unblocked at the end so no thread leaks.

    vlutils refuses non-regular files up front, so the check is bypassed here to let the
    FIFO reach the backend and exercise the time limit."""
    path = tmp_path / name
    os.mkfifo(path)
    try:
        with mock.patch("vlutils.sources._check_local_path", lambda p, original: p):
            yield str(path)
    finally:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)


@pytest.mark.parametrize("backend", ["pyav", "decord", "torchcodec"])
def test_hanging_backend_stopped_by_time_limit(tmp_path, backend, monkeypatch):
    backend_or_skip(backend)
    with hanging_file(tmp_path) as path:
        before = {t.ident for t in threading.enumerate()}
        start = time.monotonic()
        with pytest.raises(DecodeTimeoutError, match="longer than 1s") as info:
            fetch_video({"video": path}, backend=backend, timeout=1.0)
        assert time.monotonic() - start < 8.0  # the file hangs for good: headroom for a loaded machine
        assert "stuck.mp4" in str(info.value)
        if backend == "decord":  # runs in a child process: killed, nothing left behind
            import psutil

            def decoder_children():
                # multiprocessing's resource tracker is started on first use and stays: not ours;
                # a killed child that is a zombie for a moment is not running either
                alive = []
                for child in psutil.Process().children():
                    try:
                        if child.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(child.cmdline()):
                            alive.append(child)
                    except psutil.Error:
                        pass
                return alive

            wait_until = time.monotonic() + 3
            while time.monotonic() < wait_until and (
                decoder_children() or {t.ident for t in threading.enumerate()} - before
            ):
                time.sleep(0.05)
            assert not decoder_children(), "decord child process still running"
            assert not ({t.ident for t in threading.enumerate()} - before), "decode thread still blocked"
    monkeypatch.setenv("VLUTILS_VIDEO_TIMEOUT", "0.5")
    with hanging_file(tmp_path, "stuck2.mp4") as path:
        with pytest.raises(DecodeTimeoutError):
            fetch_video({"video": path}, backend=backend)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and {t.ident for t in threading.enumerate()} - before:
        time.sleep(0.05)
    assert not ({t.ident for t in threading.enumerate()} - before), "decode thread did not exit"


def test_no_optional_backend_imported_and_pyav_alone_works():
    """`import vlutils.video` loads no decord/torchcodec/torchvision, and a torch install
    without them (simulated by blocking their import) still decodes with PyAV."""
    code = (
        "import sys\n"
        "for m in ('decord', 'torchcodec', 'torchvision'): sys.modules[m] = None\n"
        "import vlutils, vlutils.video\n"
        "from vlutils.video import fetch_video\n"
        f"v = fetch_video({{'video': {fixture('vp9_30fps.webm')!r}}})\n"
        "assert v.shape[0] == 4, v.shape\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    code = "import sys, vlutils.video; print(sorted(m for m in ('decord','torchcodec','torchvision') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]
    assert proc.stderr.strip() == ""
