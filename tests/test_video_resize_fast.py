"""The compiled frame resize (vlutils.video.resize_fast) gives exactly torchvision's uint8
bicubic + antialias resize (what qwen-vl-utils 0.0.14 does), on the sizes of the resize
sweep and on video-sized frames; it refuses what it cannot reproduce, and the pipeline's
output does not depend on whether it is used."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from test_video_resize_sweep import EDGE_SIZES, _frames, _random_sizes
from vlutils.video import resize_fast, resize_taps

pytest.importorskip("numba")

VIDEO_SIZES = [
    ((480, 854), (336, 644)), ((480, 640), (476, 644)), ((480, 854), (476, 854)), ((1080, 1920), (448, 812)),
    ((720, 1280), (112, 196)), ((240, 320), (476, 644)), ((1920, 1080), (812, 448)), ((360, 640), (360, 644)),
]


def _reference(frames: torch.Tensor, dst: tuple[int, int]) -> torch.Tensor:
    return TF.resize(frames, list(dst), interpolation=InterpolationMode.BICUBIC, antialias=True).float()


def _fast(plan, frames: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    out = torch.empty((len(frames), 3, plan.dst_h, plan.dst_w), dtype=dtype)
    for i, frame in enumerate(frames):
        plan.resize_into(frame.permute(1, 2, 0).numpy(), out[i])  # HWC, as decoders give frames
    return out


@pytest.mark.parametrize("case", range(len(EDGE_SIZES) + 30 + len(VIDEO_SIZES)))
def test_fast_resize_equals_torchvision(case):
    src, dst = (EDGE_SIZES + _random_sizes(30, seed=29) + VIDEO_SIZES)[case]
    plan = resize_fast.frame_plan(src, dst)
    if src == dst:
        assert plan is None  # nothing to resize
        return
    assert plan is not None, (src, dst)
    for saturated in (False, True):
        frames = _frames(src, case, saturated)
        expected = _reference(frames, dst)
        assert torch.equal(_fast(plan, frames), expected), (src, dst, saturated)
        assert torch.equal(_fast(plan, frames, torch.uint8), expected.to(torch.uint8)), (src, dst, saturated)


def test_fast_resize_smooth_content_and_strided_frames():
    """Real frames: smooth gradients (sums land near .5 more often than on noise) and decoder
    rows with padding (a strided HWC view)."""
    src, dst = (480, 854), (336, 644)
    plan = resize_fast.frame_plan(src, dst)
    yy, xx = np.mgrid[0:480, 0:854].astype(np.float32)
    for step in (0.37, 1.0, 2.5):
        pixels = np.stack([(xx * step) % 256, (yy * step) % 256, ((xx + yy) * step / 2) % 256], -1).astype(np.uint8)
        padded = np.zeros((480, 864, 3), np.uint8)
        padded[:, :854] = pixels
        view = padded[:, :854]  # rows 864*3 bytes apart
        out = torch.empty((3, *dst))
        plan.resize_into(view, out)
        expected = _reference(torch.from_numpy(pixels).permute(2, 0, 1)[None], dst)[0]
        assert torch.equal(out, expected), step


def test_mismatch_with_torch_leaves_the_size_on_torch(monkeypatch, caplog):
    """A wrong model of torch's arithmetic (every step fused) must fail verification: the size
    pair then stays on torch's kernel, and it says so in the log."""
    monkeypatch.setattr(resize_fast, "_plans", {})
    monkeypatch.setattr(resize_taps, "_fused", {"h": {}, "v": {}})
    monkeypatch.setattr(resize_taps, "_calibrate_horizontal", lambda plan, k, kern: np.arange(k) > 0)
    with caplog.at_level(logging.DEBUG, logger="vlutils.video.resize_fast"):
        assert resize_fast.frame_plan((480, 854), (336, 644)) is None
    assert "differs from torch" in caplog.text


def test_too_many_taps_and_switch_off(monkeypatch):
    assert resize_fast.frame_plan((2000, 100), (28, 28)) is None  # 286 taps: torch's kernel
    monkeypatch.setenv("VLUTILS_FAST_RESIZE", "0")
    monkeypatch.setattr(resize_fast, "_plans", {})
    assert resize_fast.frame_plan((480, 854), (336, 644)) is None


def test_background_build_only_when_it_pays(monkeypatch):
    """In a cold process numba is loaded only once enough output has gone through torch (one
    long call, or many short ones); once loaded, each new size pair needs a few frames."""
    monkeypatch.setattr(resize_fast, "_plans", {})
    monkeypatch.setattr(resize_fast, "_building", set())
    monkeypatch.setattr(resize_fast, "_pixels_before_warm", 0)
    started = []
    monkeypatch.setattr(resize_fast.threading, "Thread", lambda **kw: started.append(kw["args"]) or _NoThread())
    monkeypatch.setattr(resize_fast, "_kernels", None)  # cold process: numba not loaded yet
    resize_fast.prepare_in_background((480, 854), (476, 854), 16)  # 16 frames: not worth loading numba
    assert not started
    resize_fast.prepare_in_background((480, 854), (336, 644), 768)  # a 10-minute video
    assert started == [((480, 854), (336, 644))]
    resize_fast.prepare_in_background((480, 854), (336, 644), 768)  # already being built
    assert len(started) == 1
    monkeypatch.setattr(resize_fast, "_pixels_before_warm", 0)
    for _ in range(2):  # 60-second clips: the second one crosses the threshold
        resize_fast.prepare_in_background((480, 640), (476, 644), 120)
    assert len(started) == 2
    monkeypatch.setattr(resize_fast, "_kernels", object())  # loaded: a new size needs little
    resize_fast.prepare_in_background((240, 320), (252, 336), 48)
    assert len(started) == 3


class _NoThread:
    def start(self) -> None:
        pass


@pytest.mark.parametrize("name", ["h264_320x240_30fps.mp4", "h264_rotate90.mp4", "h264_odd_161x97_yuv444.mp4",
                                  "mpeg4_part2_640x360.avi", "vp9_30fps.webm"])
def test_pipeline_output_same_with_and_without_fast_resize(monkeypatch, name):
    """A fixture through process_vision_info with torch's resize, then twice with the compiled
    one (the first call builds the plan while decoding; the second uses it from frame one)."""
    from _video_helpers import fixture

    import vlutils

    messages = [{"role": "user", "content": [{"type": "video", "video": fixture(name), "fps": 4.0}]}]
    monkeypatch.setenv("FORCE_QWENVL_VIDEO_READER", "pyav")
    monkeypatch.setattr(resize_fast, "NEW_SIZE_PIXELS", 0)
    monkeypatch.setattr(resize_fast, "COLD_START_PIXELS", 0)
    monkeypatch.setenv("VLUTILS_FAST_RESIZE", "0")
    _, slow = vlutils.process_vision_info(messages)
    monkeypatch.setenv("VLUTILS_FAST_RESIZE", "1")
    used = []
    real = resize_fast.FramePlan.resize_into
    monkeypatch.setattr(resize_fast.FramePlan, "resize_into", lambda self, *a: used.append(1) or real(self, *a))
    for _ in range(2):
        _, fast = vlutils.process_vision_info(messages)
        assert torch.equal(slow[0], fast[0])
        for thread in threading.enumerate():  # the plan built during the first call
            if thread.name == "vlutils-resize-plan":
                thread.join(60)
    assert used, "the compiled resize was never used"
