"""The bad-input corpus: one bad sample costs one clear exception, never a hang or crash.

Files come from ``scripts/make_bad_corpus.py`` (committed in ``fixtures/bad/``);
message-structure and option cases are built here. Every case goes through the
public ``process_vision_info`` inside a conversation where the bad item is not the
first thing, and must, within ``TIME_LIMIT`` seconds:

* raise the expected :class:`~vlutils.errors.VisionInputError` subclass whose
  message starts with the item's position ("message M, item I") and names the
  input, or
* return the documented result (``OK`` cases: decodable despite the oddity).

Nothing may be printed to stdout (checked at the file-descriptor level) and no
Python warning may escape. A watchdog (faulthandler) aborts the run with tracebacks
if a case hangs for a minute, so CI never waits forever.

Documented results (not errors): a PNG named .jpg, a 1x1 image, 16-bit greyscale and
CMYK JPEGs decode normally; a GIF with 3000 frames decodes its first frame (like the
reference) in milliseconds; noise inside WebP's compressed data is undetectable, so
it decodes to a (damaged) image; items of unknown type and non-list content are
ignored as the reference does.
"""

from __future__ import annotations

import faulthandler
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import vlutils
from vlutils.errors import (
    DecodeError,
    InvalidMessageError,
    InvalidOptionError,
    SizeLimitError,
    SourceNotFoundError,
    UnsupportedSourceError,
    VisionInputError,
)

ROOT = Path(__file__).resolve().parent.parent
BAD = ROOT / "fixtures" / "bad"
TIME_LIMIT = 10.0
OK = "ok"
OK_IMAGE = str(BAD / "ok_image.png")
OK_VIDEO = str(BAD / "ok_video.mp4")

try:
    import vlutils.video  # noqa: F401

    HAVE_VIDEO = hasattr(vlutils.video, "fetch_video")
except ImportError:
    HAVE_VIDEO = False
needs_video = pytest.mark.skipif(not HAVE_VIDEO, reason="vlutils.video not available yet")


@pytest.fixture(autouse=True)
def watchdog():
    faulthandler.dump_traceback_later(60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def conversation(item: dict) -> list[dict]:
    """The bad item sits at message 1, item 1 (after a system message and a text part)."""
    return [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": [{"type": "text", "text": "Describe this."}, item]},
    ]


def run_case(messages, expect, capfd, position: str | None = "message 1, item 1", names: str | None = None,
             match: str | None = None):
    """Run one case; returns the result (OK) or the exception."""
    capfd.readouterr()
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = vlutils.process_vision_info(messages)
            error = None
        except VisionInputError as exc:
            result, error = None, exc
        except Exception as exc:  # anything else is a bug: show it clearly
            pytest.fail(f"raised {type(exc).__name__} (not a VisionInputError): {exc}")
    elapsed = time.monotonic() - start
    out = capfd.readouterr().out
    assert out == "", f"library printed to stdout: {out[:200]!r}"
    assert elapsed < TIME_LIMIT, f"took {elapsed:.1f}s"
    # vlutils' own diagnostics go through logging. Pillow's decoder warnings (corrupt EXIF) are
    # left to the caller's filters: silencing them needs catch_warnings, which is process-global
    # and not thread-safe; under -W error they become typed errors (tests/test_images_threads.py).
    escaped = [f"{w.category.__name__}: {w.message}" for w in caught if "/PIL/" not in w.filename]
    assert not escaped, f"warnings escaped instead of going through logging: {escaped}"
    if expect == OK:
        assert error is None, f"expected a documented result, got {type(error).__name__}: {error}"
        return result
    assert error is not None, f"expected {expect}, got a result"
    allowed = expect if isinstance(expect, tuple) else (expect,)
    assert isinstance(error, allowed), f"expected {allowed}, got {type(error).__name__}: {error}"
    text = str(error)
    if position:
        assert text.startswith(position + ":"), text
    if names:
        assert names in text, f"{names!r} not named in {text!r}"
    if match:
        assert __import__("re").search(match, text), f"{match!r} not in {text!r}"
    return error


def check_images(result, count=1):
    images, videos = result
    assert videos is None and len(images) == count
    for image in images:
        assert image.mode == "RGB" and image.size[0] % 28 == 0 and image.size[1] % 28 == 0


# -------------------------------------------------------------------- image files

IMAGE_FILES = [
    *[(f"img_truncated_half.{ext}", DecodeError) for ext in ("jpg", "png", "gif", "webp", "bmp", "tiff")],
    *[(f"img_header_only.{ext}", DecodeError) for ext in ("jpg", "png", "gif", "webp", "bmp", "tiff")],
    *[(f"img_bad_magic.{ext}", DecodeError) for ext in ("jpg", "png", "gif", "webp", "bmp", "tiff")],
    ("img_noise_middle.jpg", DecodeError),
    ("img_noise_middle.png", DecodeError),  # zlib/CRC damage is detected
    ("img_noise_middle.gif", DecodeError),
    ("img_noise_middle.webp", OK),  # lossy VP8 data has no checksum: decodes damaged
    ("img_zero_bytes.png", DecodeError),
    ("img_zero_bytes.jpg", DecodeError),
    ("img_text.png", DecodeError),
    ("img_html.jpg", DecodeError),
    ("img_json.webp", DecodeError),
    ("img_huge_dims.png", SizeLimitError),
    ("img_huge_dims.jpg", SizeLimitError),
    ("img_huge_dims_one_row.png", SizeLimitError),
    ("img_extreme_ratio.png", SizeLimitError),
    ("img_png_named.jpg", OK),
    ("img_one_pixel.png", OK),
    ("img_3000_frames.gif", OK),
    ("img_16bit_gray.png", OK),
    ("img_cmyk.jpg", OK),
]


@pytest.mark.parametrize("name, expect", IMAGE_FILES, ids=[getattr(c, "values", c)[0] for c in IMAGE_FILES])
def test_image_file(name, expect, capfd):
    path = str(BAD / name)
    result = run_case(conversation({"type": "image", "image": path}), expect, capfd, names=path)
    if expect == OK:
        check_images(result)


def test_image_file_via_file_uri_and_bytes(capfd):
    path = BAD / "img_truncated_half.png"
    run_case(conversation({"type": "image", "image": "file://" + str(path)}), DecodeError, capfd, names=str(path))
    run_case(conversation({"type": "image", "image": path.read_bytes()}), DecodeError, capfd,
             names=f"<{path.stat().st_size} bytes>")


def test_huge_dims_refused_before_allocation(capfd):
    """100000x100000 RGB would need 30 GB: the refusal must come from the header."""
    import psutil

    rss = psutil.Process().memory_info().rss
    run_case(conversation({"image": str(BAD / "img_huge_dims.png")}), SizeLimitError, capfd, match="pixel")
    assert psutil.Process().memory_info().rss - rss < 50 * 2**20


def test_bad_item_among_good_ones_in_a_batch(capfd):
    """Batched conversations: the position includes the conversation index."""
    good = {"image": OK_IMAGE}
    bad = {"image": str(BAD / "img_text.png")}
    batch = [[{"role": "user", "content": [good]}], [{"role": "user", "content": [good, good]},
                                                     {"role": "user", "content": [bad]}]]
    run_case(batch, DecodeError, capfd, position="conversation 1, message 1, item 0", names="img_text.png")


# ------------------------------------------------------------ message structure

MESSAGE_CASES = [
    ("conversations_none", None, InvalidMessageError, None),
    ("conversations_str", "look at /etc/passwd", InvalidMessageError, None),
    ("conversations_int", 42, InvalidMessageError, None),
    ("message_no_content", [{"role": "user"}], InvalidMessageError, "message 0"),
    ("message_not_dict", [{"role": "user", "content": []}, ["image", OK_IMAGE]], InvalidMessageError, "message 1"),
    ("conversation_not_list", [[{"role": "user", "content": []}], "oops"], InvalidMessageError, "conversation 1"),
    ("item_int", [{"role": "user", "content": [{"type": "text", "text": "x"}, 42]}], InvalidMessageError,
     "message 0, item 1"),
    ("item_none", [{"role": "user", "content": [None]}], InvalidMessageError, "message 0, item 0"),
    ("item_list", [{"role": "user", "content": [[{"image": OK_IMAGE}]]}], InvalidMessageError, "message 0, item 0"),
]


@pytest.mark.parametrize("case_id, messages, expect, where", MESSAGE_CASES, ids=[c[0] for c in MESSAGE_CASES])
def test_message_structure(case_id, messages, expect, where, capfd):
    error = run_case(messages, expect, capfd, position=None)
    if where:
        assert where in str(error), str(error)


ITEM_CASES = [
    ("type_image_without_image", {"type": "image"}, InvalidMessageError, "should be in content"),
    ("type_image_url_without_url", {"type": "image_url"}, InvalidMessageError, "should be in content"),
    ("type_video_without_video", {"type": "video"}, InvalidMessageError, "should be in content"),
    ("image_none", {"type": "image", "image": None}, InvalidMessageError, "None"),
    ("image_int", {"type": "image", "image": 123}, UnsupportedSourceError, "unsupported source type int"),
    ("image_float_nan", {"type": "image", "image": float("nan")}, UnsupportedSourceError, "float"),
    ("image_list", {"type": "image", "image": [OK_IMAGE]}, UnsupportedSourceError, "list"),
    ("image_empty_str", {"type": "image", "image": "   "}, InvalidMessageError, "empty"),
    ("image_dict_without_url", {"type": "image", "image": {"path": OK_IMAGE}}, UnsupportedSourceError, "dict"),
    ("image_url_object_without_url", {"type": "image_url", "image_url": {"detail": "high"}}, InvalidMessageError,
     "no 'url'"),
    ("image_url_int", {"type": "image_url", "image_url": 7}, UnsupportedSourceError, "int"),
    ("image_missing_file", {"image": "/nonexistent/dir/cat.png"}, SourceNotFoundError, "no such file"),
    ("image_directory", {"image": str(BAD)}, SourceNotFoundError, "directory"),
    ("image_unknown_scheme", {"image": "ftp://127.0.0.1/cat.png"}, UnsupportedSourceError, "scheme 'ftp'"),
    ("image_data_uri_bad_base64", {"image": "data:image/png;base64,@@@@not base64@@@@"}, UnsupportedSourceError,
     "base64"),
    ("image_data_uri_no_comma", {"image": "data:image/png;base64"}, UnsupportedSourceError, "separat"),
    ("image_data_uri_empty", {"image": "data:image/png,"}, DecodeError, "empty"),
    ("image_array_float", {"image": np.zeros((8, 8, 3), np.float32)}, UnsupportedSourceError, "uint8"),
    ("image_array_empty", {"image": np.zeros((0, 8, 3), np.uint8)}, DecodeError, "empty"),
    ("image_array_5_channels", {"image": np.zeros((8, 8, 5), np.uint8)}, UnsupportedSourceError, "shape"),
    ("image_tensor_4d", {"image": torch.zeros(1, 3, 8, 8, dtype=torch.uint8)}, UnsupportedSourceError, "shape"),
]


@pytest.mark.parametrize("case_id, item, expect, match", ITEM_CASES, ids=[c[0] for c in ITEM_CASES])
def test_bad_item(case_id, item, expect, match, capfd):
    run_case(conversation(item), expect, capfd, match=match)


@pytest.mark.parametrize(
    "case_id, messages",
    [
        ("unknown_type_audio", conversation({"type": "audio", "audio": "/tmp/a.wav"})),
        ("unknown_type_no_payload", conversation({"type": "file"})),
        ("content_is_dict", [{"role": "user", "content": {"image": "/etc/passwd"}}]),
        ("content_is_str", [{"role": "user", "content": "/etc/passwd"}]),
    ],
)
def test_ignored_like_the_reference(case_id, messages, capfd):
    """Not vision items (documented): the reference ignores them too, so must we."""
    from qwen_vl_utils import process_vision_info as reference

    assert run_case(messages, OK, capfd) == (None, None) == reference(messages)


@pytest.mark.parametrize(
    "case_id, messages",
    [
        ("content_bare_strings", [{"role": "user", "content": ["hello", "/etc/passwd"]}]),
        ("empty_conversation", []),
    ],
)
def test_ignored_where_the_reference_crashed(case_id, messages, capfd):
    """The reference raises AttributeError/IndexError here; vlutils (documented) treats
    bare text parts and an empty conversation as carrying no vision input."""
    assert run_case(messages, OK, capfd) == (None, None)


# ------------------------------------------------------------------ image options

NAN, INF = float("nan"), float("inf")
IMAGE_OPTION_CASES = [
    ({"min_pixels": "3136"}, "min_pixels"),
    ({"min_pixels": -5}, "min_pixels"),
    ({"min_pixels": 0}, "min_pixels"),
    ({"min_pixels": NAN}, "min_pixels"),
    ({"min_pixels": None}, "min_pixels"),
    ({"max_pixels": -1}, "max_pixels"),
    ({"max_pixels": 0}, "max_pixels"),
    ({"max_pixels": NAN}, "max_pixels"),
    ({"max_pixels": INF}, "max_pixels"),
    ({"max_pixels": True}, "max_pixels"),
    ({"max_pixels": "1e6"}, "max_pixels"),
    ({"min_pixels": 10000, "max_pixels": 100}, "max_pixels"),
    ({"min_pixels": 1, "max_pixels": 1}, "empty target size"),
    ({"resized_height": 0, "resized_width": 28}, "resized_height"),
    ({"resized_height": -28, "resized_width": 28}, "resized_height"),
    ({"resized_height": 28, "resized_width": NAN}, "resized_width"),
    ({"resized_height": "28", "resized_width": 28}, "resized_height"),
    ({"resized_height": [28], "resized_width": 28}, "resized_height"),
]


@pytest.mark.parametrize("options, named", IMAGE_OPTION_CASES, ids=[str(o) for o, _ in IMAGE_OPTION_CASES])
def test_image_option(options, named, capfd):
    run_case(conversation({"type": "image", "image": OK_IMAGE, **options}), InvalidOptionError, capfd,
             names=OK_IMAGE, match=named)


HUGE_REQUEST_SCRIPT = r"""
import resource, sys, json
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a bug must fail fast here, not eat the machine
import vlutils
out = {}
for name, item in json.loads(sys.argv[1]).items():
    try:
        vlutils.process_vision_info([{"role": "user", "content": [item]}])
        out[name] = "ok"
    except BaseException as exc:
        out[name] = type(exc).__name__ + ": " + str(exc)[:200]
print(json.dumps(out))
"""


HUGE_REQUESTS = {
    "image_1e12": {"image": OK_IMAGE, "min_pixels": 1e12, "max_pixels": 1e12},
    "image_1e20": {"image": OK_IMAGE, "min_pixels": 1e20, "max_pixels": 1e20},
    "video_1e12": {"video": OK_VIDEO, "min_pixels": 1e12, "max_pixels": 1e12},
}


@pytest.fixture(scope="module")
def huge_request_outcomes():
    """All huge-request cases in one child with a 4 GB address-space limit: without a
    fix the allocation really happens (the OOM killer would end the test run)."""
    import json
    import subprocess
    import sys

    cases = {k: v for k, v in HUGE_REQUESTS.items() if HAVE_VIDEO or not k.startswith("video")}
    proc = subprocess.run([sys.executable, "-c", HUGE_REQUEST_SCRIPT, json.dumps(cases)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", [
    "image_1e12",
    "image_1e20",
    pytest.param("video_1e12", marks=[needs_video]),
])
def test_huge_requested_output_size_is_refused(case, huge_request_outcomes):
    """min_pixels/max_pixels from a message decide the output size: absurd values must
    be refused with SizeLimitError before allocating."""
    outcome = huge_request_outcomes[case]
    assert outcome.startswith("SizeLimitError: message 0, item 0: "), outcome


def test_image_patch_size_wrong_type(capfd):
    run_case(conversation({"image": OK_IMAGE}), OK, capfd)
    for bad in ("14", 0, -14, 14.5, NAN):
        with pytest.raises(InvalidOptionError, match="image_patch_size"):
            vlutils.process_vision_info(conversation({"image": OK_IMAGE}), image_patch_size=bad)


# ------------------------------------------------------------------- video files

VIDEO_FILES = [
    *[(f"vid_header_only.{ext}", DecodeError) for ext in ("mp4", "mkv", "webm", "avi")],
    *[(f"vid_bad_magic.{ext}", DecodeError) for ext in ("mp4", "mkv", "webm")],
    ("vid_truncated_half.mp4", DecodeError),  # moov atom (the index) is at the end: gone
    ("vid_zero_bytes.mp4", (DecodeError, UnsupportedSourceError)),
    ("vid_text.mp4", (DecodeError, UnsupportedSourceError)),  # an HLS playlist header: refused as a playlist once bug [4] is fixed
    ("vid_audio_only.mp4", DecodeError),
    ("vid_audio_only.webm", DecodeError),
    ("vid_audio_only.avi", DecodeError),
    # one frame is below the 2-frame minimum (FRAME_FACTOR): the reference raises
    # ValueError("nframes should in interval [2, 1]") too
    ("vid_one_frame.mp4", (InvalidOptionError, DecodeError)),
    ("vid_png_as_video.mp4", (InvalidOptionError, DecodeError)),  # libav opens it as a 1-frame image2 stream
]
# Streamable containers keep their first half decodable, noise inside compressed frames
# is undetectable, and headers that over-promise frames are clipped to what decodes:
# each may return frames (documented) or raise DecodeError, but never hang or crash.
VIDEO_FILES_LENIENT = [
    "vid_truncated_half.mkv",
    "vid_truncated_half.webm",
    "vid_truncated_half.avi",
    "vid_noise_middle.mp4",
    "vid_noise_middle.mkv",
    "vid_noise_middle.webm",
    "vid_noise_middle.avi",
    "vid_lying_frame_count.mp4",
    "vid_lying_frame_count.avi",
    "vid_bad_magic.avi",  # libav probes AVI by content and resyncs on chunk ids
]


def video_conversation(path: str, **options) -> list[dict]:
    return conversation({"type": "video", "video": path, **options})


@needs_video
@pytest.mark.parametrize("name, expect", VIDEO_FILES, ids=[n for n, _ in VIDEO_FILES])
def test_video_file(name, expect, capfd):
    path = str(BAD / name)
    run_case(video_conversation(path), expect, capfd, names=path)


@needs_video
@pytest.mark.parametrize("name", VIDEO_FILES_LENIENT)
def test_video_file_lenient(name, capfd):
    path = str(BAD / name)
    capfd.readouterr()
    start = time.monotonic()
    try:
        images, videos = vlutils.process_vision_info(video_conversation(path))
    except VisionInputError as exc:
        assert str(exc).startswith("message 1, item 1:") and path in str(exc), str(exc)
        assert isinstance(exc, (DecodeError, SizeLimitError)), repr(exc)
    else:
        (video,) = videos
        assert video.ndim == 4 and video.shape[0] >= 2 and video.shape[0] % 2 == 0
        assert torch.isfinite(video).all()
    assert time.monotonic() - start < TIME_LIMIT
    assert capfd.readouterr().out == ""


@needs_video
@pytest.mark.parametrize("backend", ["decord", "torchcodec", "torchvision"])
def test_every_video_file_with_every_backend(backend, capfd, monkeypatch):
    """The whole video corpus through the other backends: typed error or frames, in
    time, nothing on stdout (decord logs from C++), never a crash of the process."""
    pytest.importorskip(backend)
    monkeypatch.setenv("FORCE_QWENVL_VIDEO_READER", backend)
    vlutils.process_vision_info(video_conversation(OK_VIDEO))  # warm-up: the first torchcodec call imports ~8 s
    names = sorted(p.name for p in BAD.glob("vid_*")) + ["ok_video.mp4"]
    outcomes = {}
    for name in names:
        path = str(BAD / name)
        capfd.readouterr()
        start = time.monotonic()
        try:
            _, videos = vlutils.process_vision_info(video_conversation(path))
            assert videos[0].shape[0] % 2 == 0 and torch.isfinite(videos[0]).all()
            outcomes[name] = "ok"
        except VisionInputError as exc:
            assert str(exc).startswith("message 1, item 1:") and path in str(exc), str(exc)
            outcomes[name] = type(exc).__name__
        assert time.monotonic() - start < TIME_LIMIT, name
        assert capfd.readouterr().out == "", f"{backend} printed to stdout for {name}"
    assert outcomes["ok_video.mp4"] == "ok"
    for name in ("vid_zero_bytes.mp4", "vid_audio_only.mp4", "vid_header_only.mp4"):
        assert outcomes[name] == "DecodeError", (name, outcomes[name])
    assert outcomes["vid_text.mp4"] in ("DecodeError", "UnsupportedSourceError")


@needs_video
def test_lying_frame_count_never_yields_more_than_exists(capfd):
    """The AVI header claims 10^6 frames; 3 s at 8 fps hold 24. Whatever is returned
    must come from real frames (at most 24, 2 fps -> about 6)."""
    try:
        _, videos = vlutils.process_vision_info(video_conversation(str(BAD / "vid_lying_frame_count.avi")))
    except VisionInputError:
        return
    assert videos[0].shape[0] <= 24


VIDEO_OPTION_CASES = [
    ({"fps": 0}, "fps"),
    ({"fps": -1}, "fps"),
    ({"fps": NAN}, "fps"),
    ({"fps": "2"}, "fps"),
    ({"fps": True}, "fps"),
    ({"nframes": 0}, "nframes"),
    ({"nframes": -4}, "nframes"),
    ({"nframes": NAN}, "nframes"),
    ({"nframes": "8"}, "nframes"),
    ({"nframes": 10**9}, "nframes"),
    ({"fps": 2, "nframes": 4}, "nframes"),
    ({"min_pixels": -1}, "min_pixels"),
    ({"max_pixels": NAN}, "max_pixels"),
    ({"total_pixels": 0}, "total_pixels"),
    ({"resized_height": 0, "resized_width": 28}, "resized_height"),
    ({"resized_height": 28, "resized_width": "28"}, "resized_width"),
    ({"video_start": 2.0, "video_end": 1.0}, "time range|video_start"),
    ({"video_start": "0"}, "video_start"),
]


@needs_video
@pytest.mark.parametrize("options, named", VIDEO_OPTION_CASES, ids=[str(o) for o, _ in VIDEO_OPTION_CASES])
def test_video_option(options, named, capfd):
    run_case(video_conversation(OK_VIDEO, **options), (InvalidOptionError, SizeLimitError), capfd, names=OK_VIDEO,
             match=named)


@needs_video
@pytest.mark.parametrize(
    "case_id, value, expect",
    [
        ("empty_frame_list", [], (InvalidMessageError, UnsupportedSourceError, DecodeError)),
        ("frame_list_of_ints", [1, 2, 3, 4], (UnsupportedSourceError, InvalidMessageError)),
        ("frame_list_missing_file", [OK_IMAGE, "/nonexistent/frame.png"], SourceNotFoundError),
        ("frame_list_corrupt_file", [OK_IMAGE, str(BAD / "img_text.png")], DecodeError),
        ("video_int", 5, (UnsupportedSourceError, InvalidMessageError)),
        ("video_none", None, (InvalidMessageError, UnsupportedSourceError)),
        ("video_missing", "/nonexistent/clip.mp4", SourceNotFoundError),
    ],
)
def test_bad_video_values(case_id, value, expect, capfd):
    run_case(video_conversation(value), expect, capfd)


@needs_video
def test_ok_video_control(capfd):
    """The control file decodes, so the failures above are about the damage."""
    _, videos = run_case(video_conversation(OK_VIDEO), OK, capfd)
    assert videos[0].shape[0] % 2 == 0 and videos[0].shape[1] == 3


def test_corpus_is_small_and_complete():
    files = list(BAD.iterdir())
    assert sum(f.stat().st_size for f in files) < 1_000_000
    named = {getattr(c, "values", c)[0] for c in IMAGE_FILES} | {n for n, _ in VIDEO_FILES} | set(VIDEO_FILES_LENIENT)
    named |= {"ok_image.png", "ok_video.mp4", "img_huge_dims.png"}
    assert named <= {f.name for f in files}


# ------------------------------------------------------------------ special files

# The child imports everything a case can need (for videos the video stack and torch: 5-16 s
# on a busy machine) BEFORE it says "ready"; the hang limit then only measures the case itself, which
# takes milliseconds. Start-up gets its own, far larger limit.
SPECIAL_FILE_SCRIPT = r"""
import json, resource, sys, time
kind, path, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # a bug must fail fast, not eat the machine
import vlutils
if kind == "video":  # the imports a first video item triggers (images need no torch: 1 GB limit above)
    import vlutils.video
print("ready", flush=True)
sys.stdin.readline()  # go
start = time.monotonic()
try:
    vlutils.process_vision_info([{"role": "user", "content": [{kind: path}]}])
    outcome = "ok"
except BaseException as exc:
    outcome = f"{type(exc).__name__}: {exc}"[:300]
print(json.dumps({"outcome": outcome, "seconds": time.monotonic() - start}), flush=True)
"""


SPECIAL_CASES = [("image", "/dev/zero"), ("image", "fifo"), ("video", "fifo"), ("video", "/dev/zero"),
                 ("image", "/proc/self/pagemap")]
SPECIAL_STARTUP_TIMEOUT = 240  # interpreter + imports, several children at once on a loaded machine
SPECIAL_TIMEOUT = 20  # the case itself: milliseconds when right, forever when it hangs


@pytest.fixture(scope="module")
def special_file_outcomes(tmp_path_factory):
    """Run every special-file case at once, each in its own child (1 GB address-space
    limit for images, a wall limit for all), because the failure modes are hangs and
    memory blow-ups. Returns {(kind, special): outcome text}."""
    import json
    import os
    import subprocess
    import sys

    fifo = str(tmp_path_factory.mktemp("special") / "pipe.mp4")
    os.mkfifo(fifo)
    procs = {}
    for kind, special in SPECIAL_CASES:
        path = fifo if special == "fifo" else special
        if not os.path.exists(path):
            continue
        limit = (1 << 30) if kind == "image" else 0
        procs[(kind, special)] = subprocess.Popen(
            [sys.executable, "-c", SPECIAL_FILE_SCRIPT, kind, path, str(limit)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    outcomes = {}
    try:
        started = _wait_until_ready(procs, SPECIAL_STARTUP_TIMEOUT)
        for key, proc in procs.items():
            if key not in started:
                outcomes[key] = f"did not start: {proc.stderr.read()[-300:] if proc.poll() is not None else 'timeout'}"
        for key in started:
            procs[key].stdin.write("go\n")
            procs[key].stdin.flush()
        deadline = time.monotonic() + SPECIAL_TIMEOUT
        for key in started:
            proc = procs[key]
            try:
                out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
                outcomes[key] = json.loads(out.strip().splitlines()[-1])["outcome"] if out.strip() else err[-300:]
            except subprocess.TimeoutExpired:
                outcomes[key] = f"still running {SPECIAL_TIMEOUT} s after its imports (hang)"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    return outcomes


def _wait_until_ready(procs: dict, timeout: float) -> set:
    """The keys of the children that printed "ready" within ``timeout`` seconds."""
    import selectors

    ready, deadline = set(), time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for key, proc in procs.items():
            selector.register(proc.stdout, selectors.EVENT_READ, key)
        while len(ready) < len(procs) and time.monotonic() < deadline:
            for event, _ in selector.select(timeout=max(0.1, deadline - time.monotonic())):
                key = event.data
                line = procs[key].stdout.readline()
                selector.unregister(event.fileobj)
                if line.strip() == "ready":
                    ready.add(key)
            if all(procs[k].poll() is not None for k in procs if k not in ready):
                break
    return ready


@pytest.mark.parametrize("kind, special", [
    ("image", "/dev/zero"),
    ("image", "fifo"),
    pytest.param("video", "fifo", marks=needs_video),
    pytest.param("video", "/dev/zero", marks=needs_video),
    ("image", "/proc/self/pagemap"),  # reports size 0, holds 8 bytes per page of address space
])
def test_special_files_are_refused(kind, special, special_file_outcomes):
    """Not regular files: /dev/zero never ends, a FIFO with no writer blocks forever, /proc
    files lie about their size. Each must end in a typed error naming its position."""
    if (kind, special) not in special_file_outcomes:
        pytest.skip(f"{special} does not exist here")
    outcome = special_file_outcomes[(kind, special)]
    error_names = ("SourceNotFoundError", "SizeLimitError", "DecodeError", "UnsupportedSourceError")
    assert outcome.startswith(error_names), outcome
    assert "message 0, item 0" in outcome, outcome
