"""Frame budget and time window: smart_nframes / calculate_video_frame_range against the
reference functions on generated inputs, and the decode work the pyav reader avoids."""

from __future__ import annotations


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _video_helpers import fixture, reference_fetch, reference_module
from vlutils.errors import VisionInputError
from vlutils.video import calculate_video_frame_range, fetch_video, smart_nframes
from vlutils.video.sampling import is_variable_frame_rate, linspace_indices, time_indices

positive = st.one_of(st.integers(1, 2000), st.floats(0.05, 2000, allow_nan=False))


def same_outcome(ours, ref):
    """Both return the same value, or both raise (ours a VisionInputError)."""
    try:
        expected = ref()
    except (ValueError, AssertionError, ZeroDivisionError):
        with pytest.raises(VisionInputError):
            ours()
        return
    assert ours() == expected


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(1, 5000),
    video_fps=st.floats(0.5, 240, allow_nan=False),
    choice=st.sampled_from(["fps", "nframes", "none"]),
    value=positive,
    min_frames=st.one_of(st.none(), st.integers(1, 64)),
    max_frames=st.one_of(st.none(), st.integers(1, 2000)),
)
def test_smart_nframes_matches_reference(total, video_fps, choice, value, min_frames, max_frames):
    vp = reference_module()
    ele = {} if choice == "none" else {choice: value}
    if choice != "nframes":
        if min_frames is not None:
            ele["min_frames"] = min_frames
        if max_frames is not None:
            ele["max_frames"] = max_frames
    same_outcome(lambda: smart_nframes(dict(ele), total, video_fps), lambda: vp.smart_nframes(dict(ele), total, video_fps))


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(1, 5000),
    video_fps=st.floats(0.5, 240, allow_nan=False),
    start=st.one_of(st.none(), st.floats(-5, 400, allow_nan=False)),
    end=st.one_of(st.none(), st.floats(-5, 400, allow_nan=False)),
)
def test_frame_range_matches_reference(total, video_fps, start, end):
    vp = reference_module()
    ele = {}
    if start is not None:
        ele["video_start"] = start
    if end is not None:
        ele["video_end"] = end
    same_outcome(
        lambda: calculate_video_frame_range(dict(ele), total, video_fps),
        lambda: vp.calculate_video_frame_range(dict(ele), total, video_fps),
    )


@settings(max_examples=300, deadline=None)
@given(start=st.integers(0, 3000), span=st.integers(1, 30000), n=st.integers(2, 768))
def test_linspace_indices_are_the_reference_formula(start, span, n):
    end = start + span
    assert linspace_indices(start, end, n) == torch.linspace(start, end, n).round().long().tolist()


def test_vfr_detection_and_time_indices():
    cfr = [i / 30 for i in range(100)]
    ntsc_ms = [round(i * 1001 / 30) / 1000 for i in range(100)]  # 29.97 in a 1/1000 time base
    vfr = [i / 30 for i in range(30)] + [1 + i / 10 for i in range(10)]
    assert not is_variable_frame_rate(cfr) and not is_variable_frame_rate(ntsc_ms)
    assert is_variable_frame_rate(vfr)
    picked = time_indices(vfr, 0, len(vfr) - 1, 4)
    # instants 0, 0.633, 1.267, 1.9 s -> nearest frames
    assert picked == [0, 19, 33, 39]


def test_sparse_sampling_seeks_and_skips_but_matches_reference(monkeypatch):
    """nframes=4 of a 300-frame, 48-frame-GOP file: keyframe seeks and skipped B-frames
    decode far fewer frames than the file holds, with output identical to the reference."""
    ele = {"video": fixture("h264_long_gop.mp4"), "nframes": 4}
    (ref, _), _ = reference_fetch(ele)
    (video, md), _ = fetch_video(dict(ele), return_video_sample_fps=True, return_video_metadata=True)
    assert torch.equal(video, ref)
    assert md.info["seeks"] >= 2
    assert md.info["frames_decoded"] < 300 // 2
    monkeypatch.setenv("VLUTILS_VIDEO_SKIP_NONREF", "0")
    (plain, md2), _ = fetch_video(dict(ele), return_video_sample_fps=True, return_video_metadata=True)
    assert torch.equal(plain, ref)
    assert md2.info["frames_decoded"] > md.info["frames_decoded"]


def test_dense_sampling_skips_unwanted_nonref_frames():
    ele = {"video": fixture("h264_320x240_30fps.mp4"), "fps": 5}
    (ref, _), _ = reference_fetch(ele)
    (video, md) = fetch_video(dict(ele), return_video_metadata=True)
    assert torch.equal(video, ref)
    assert md.info["frames_decoded"] < 90
