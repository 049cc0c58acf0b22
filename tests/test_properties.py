"""Property-based tests (hypothesis, derandomized, bounded example counts).

* ``smart_resize``: sides are multiples of the factor; the result respects the pixel
  budget it was rounded towards; the aspect ratio is kept within one factor step (one
  scale s fits both sides to within ``factor``); and it equals qwen-vl-utils 0.0.14
  wherever the reference returns, and raises ``VisionInputError`` wherever it raises.
* ``smart_nframes``: even counts within ``[2, total_frames]`` and within the
  ``max_frames`` bound, equal to the reference, typed errors otherwise.
* The message walker: ``process_vision_info`` on arbitrary nesting of valid and
  invalid items (in-memory images only, no files or network) raises nothing but
  ``VisionInputError`` subclasses, and valid conversations return one image per item.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import vlutils
from vlutils import smart_resize
from vlutils.errors import VisionInputError
from vlutils.messages import iter_vision_items

from qwen_vl_utils import vision_process as reference

PROFILE = settings(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                   database=None)
FACTORS = st.sampled_from([14, 16, 28, 32, 56])
SIDES = st.integers(min_value=1, max_value=20_000)


def reference_outcome(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs), None
    except (ValueError, AssertionError, ZeroDivisionError, TypeError) as exc:
        return None, exc


# ------------------------------------------------------------------ smart_resize


@settings(PROFILE, max_examples=400)
@given(height=SIDES, width=SIDES, factor=FACTORS,
       min_pixels=st.integers(1, 4_000_000), extra=st.integers(0, 50_000_000))
def test_smart_resize_invariants(height, width, factor, min_pixels, extra):
    max_pixels = min_pixels + extra
    expected, ref_error = reference_outcome(reference.smart_resize, height, width, factor, min_pixels, max_pixels)
    if ref_error is not None:
        with pytest.raises(VisionInputError):
            smart_resize(height, width, factor, min_pixels, max_pixels)
        return
    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    assert (h, w) == expected
    assert h % factor == 0 and w % factor == 0

    rounded = max(factor, round(height / factor) * factor) * max(factor, round(width / factor) * factor)
    if rounded > max_pixels:  # shrunk: never above the budget
        assert h * w <= max_pixels
    elif rounded < min_pixels:  # grown: never below the floor
        assert h * w >= min_pixels
    else:
        assert min_pixels <= h * w <= max_pixels

    if h > 0 and w > 0:
        # one scale s maps both sides to within one factor step: the aspect ratio is kept
        low = max((h - factor) / height, (w - factor) / width)
        high = min((h + factor) / height, (w + factor) / width)
        assert low <= high + 1e-9, (height, width, h, w)


@settings(PROFILE, max_examples=150)
@given(
    height=st.one_of(SIDES, st.floats(allow_nan=True, allow_infinity=True), st.just(0), st.integers(-10, 0)),
    width=st.one_of(SIDES, st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3), st.none()),
    factor=st.one_of(FACTORS, st.integers(-3, 0), st.floats(0.1, 3.5)),
)
def test_smart_resize_bad_arguments_are_typed(height, width, factor):
    try:
        h, w = smart_resize(height, width, factor)
    except VisionInputError:
        return
    assert h % factor == 0 and w % factor == 0


# ----------------------------------------------------------------- smart_nframes

try:
    from vlutils.video import smart_nframes
except ImportError:  # video not built yet
    smart_nframes = None
needs_video = pytest.mark.skipif(smart_nframes is None, reason="vlutils.video not available yet")

FRAME_OPTIONS = st.one_of(
    st.fixed_dictionaries({}, optional={"fps": st.floats(0.05, 120), "min_frames": st.integers(1, 64),
                                        "max_frames": st.integers(1, 2000)}),
    st.fixed_dictionaries({"nframes": st.integers(1, 5000)}),
    st.fixed_dictionaries({"nframes": st.floats(0.5, 5000)}),
)


@needs_video
@settings(PROFILE, max_examples=400)
@given(ele=FRAME_OPTIONS, total=st.integers(1, 200_000), video_fps=st.floats(0.5, 240))
def test_smart_nframes_invariants(ele, total, video_fps):
    expected, ref_error = reference_outcome(reference.smart_nframes, dict(ele), total, video_fps)
    if ref_error is not None:
        with pytest.raises(VisionInputError):
            smart_nframes(dict(ele), total_frames=total, video_fps=video_fps)
        return
    n = smart_nframes(dict(ele), total_frames=total, video_fps=video_fps)
    assert n == expected
    assert isinstance(n, int) and n % 2 == 0 and 2 <= n <= total
    if "nframes" not in ele:
        assert n <= max(2, ele.get("max_frames", min(768, total)))


@needs_video
@settings(PROFILE, max_examples=100)
@given(ele=st.dictionaries(st.sampled_from(["fps", "nframes", "min_frames", "max_frames"]),
                           st.one_of(st.none(), st.text(max_size=2), st.floats(), st.integers(-5, 5), st.booleans()),
                           max_size=3),
       total=st.integers(-2, 50), video_fps=st.one_of(st.floats(), st.integers(-1, 60)))
def test_smart_nframes_bad_values_are_typed(ele, total, video_fps):
    try:
        n = smart_nframes(ele, total_frames=total, video_fps=video_fps)
    except VisionInputError:
        return
    assert n % 2 == 0 and 2 <= n <= total


# --------------------------------------------------------------- message walker

_TINY = [Image.new("RGB", (9, 7), (5, 6, 7)), Image.new("RGBA", (4, 12), (1, 2, 3, 4)), Image.new("L", (20, 3), 9),
         np.zeros((6, 6, 3), np.uint8), np.full((5, 8), 200, np.uint8)]
# no ':' in text, so no string can become a URL; everything stays in memory or fails as a path
TEXT = st.text(alphabet=st.characters(blacklist_characters=":\x00", blacklist_categories=("Cs",)), max_size=8)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(), TEXT, st.binary(max_size=8))
JUNK = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)
OPTION_VALUES = st.one_of(st.integers(-5, 1_000_000), st.floats(-1, 1e6), st.just(float("nan")), st.none(), TEXT)
TINY = st.sampled_from(range(len(_TINY))).map(lambda i: _TINY[i])
GOOD_ITEM = st.one_of(
    st.builds(lambda im: {"type": "image", "image": im}, TINY),
    st.builds(lambda im: {"image": im}, TINY),
    st.builds(lambda im: {"type": "image_url", "image_url": {"url": im}}, TINY),
)
BAD_ITEM = st.one_of(
    JUNK,
    st.dictionaries(st.sampled_from(["type", "image", "image_url", "video", "video_url", "text"]), JUNK, max_size=3),
    st.builds(lambda item, opts: {**item, **opts}, GOOD_ITEM,
              st.dictionaries(st.sampled_from(["min_pixels", "max_pixels", "resized_height", "resized_width"]),
                              OPTION_VALUES, min_size=1, max_size=2)),
    st.builds(lambda im, frames: {"type": "video", "video": [im] * frames}, TINY, st.integers(0, 3)),
)
TEXT_ITEM = st.builds(lambda t: {"type": "text", "text": t}, TEXT)
MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]),
                           "content": st.one_of(TEXT, st.lists(st.one_of(GOOD_ITEM, TEXT_ITEM, BAD_ITEM), max_size=4))}),
    JUNK,
)
CONVERSATIONS = st.one_of(st.lists(MESSAGE, max_size=4), st.lists(st.lists(MESSAGE, max_size=3), min_size=1, max_size=3),
                          JUNK)


@settings(PROFILE, max_examples=300)
@given(conversations=CONVERSATIONS)
def test_walker_raises_only_typed_errors(conversations):
    try:
        items = iter_vision_items(conversations)
    except VisionInputError:
        items = None
    try:
        images, videos = vlutils.process_vision_info(conversations)
    except VisionInputError as exc:
        assert str(exc)  # a message, never empty
        return
    assert items is not None, "process_vision_info accepted what iter_vision_items refused"
    count = len(images or []) + len(videos or [])
    assert count == len(items)


@settings(PROFILE, max_examples=100)
@given(messages=st.lists(st.fixed_dictionaries({"role": st.just("user"),
                                               "content": st.lists(st.one_of(GOOD_ITEM, TEXT_ITEM), max_size=4)}),
                         min_size=1, max_size=3))
def test_valid_conversations_give_one_image_per_item(messages):
    expected = sum(1 for m in messages for item in m["content"] if item.get("type") != "text")
    images, videos = vlutils.process_vision_info(messages)
    assert videos is None
    assert len(images or []) == expected
    for image in images or []:
        assert image.mode == "RGB" and image.size[0] % 28 == 0 and image.size[1] % 28 == 0


# ------------------------------------------------------------------- source strings

URL_PREFIXES = st.sampled_from([
    "http://", "https://", "HTTP://", "http://[", "http://[::", "http://127.0.0.1:", "http://user@", "file://",
    "file:", "data:", "data:image/png;base64,", "data:;base64,", "ftp://", "//", "", "/", "./", "~/",
])
URL_TAILS = st.lists(st.sampled_from(list("ab1:/[]@%?#.\\-_ ~=&;,ß\u2028") + ["%00", "%2F", "..", "::1", "999"]),
                     max_size=12).map("".join)


@pytest.fixture
def offline(monkeypatch):
    """No name resolution and no connections: a URL may be tried, it just fails fast."""
    import socket

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "offline test")

    def no_connect(*args, **kwargs):
        raise ConnectionRefusedError("offline test")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(socket.socket, "connect", no_connect)
    monkeypatch.setenv("VLUTILS_HTTP_RETRIES", "0")


@settings(PROFILE, max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(prefix=URL_PREFIXES, tail=URL_TAILS, kind=st.sampled_from(["image", "video", "image_url"]))
def test_any_source_string_fails_typed(offline, prefix, tail, kind):
    """Whatever string a message puts in an image/video field, the only exceptions are
    VisionInputError subclasses (parsing, resolving and connecting all fail here)."""
    value = prefix + tail
    try:
        vlutils.process_vision_info([{"role": "user", "content": [{kind: value}]}])
    except VisionInputError:
        pass
