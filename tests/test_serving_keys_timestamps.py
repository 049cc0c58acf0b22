"""transformers-style source keys (url / path / base64), Windows file URIs, and frame-list
videos with real timestamps (issue 13, items 2 and 3)."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

import vlutils
from _video_helpers import fixture, reference_module
from vlutils.errors import InvalidOptionError, UnsafeSourceError
from vlutils.sources import file_uri_to_path, windows_file_uri_to_path
from vlutils.video import fetch_video


def _png(seed: int, size=(97, 61)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- keys


def test_image_keys_are_equivalent(tmp_path, http_server):
    data = _png(1)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    (http_server.root / "keys_a.png").write_bytes(data)
    b64 = base64.b64encode(data).decode()
    expected = np.asarray(vlutils.fetch_image({"image": str(path)}))
    items = [
        {"type": "image", "url": http_server.url("keys_a.png")},
        {"type": "image", "url": path.as_uri()},
        {"type": "image", "path": str(path)},
        {"type": "image", "base64": b64},
        {"type": "image", "base64": "data:image/png;base64," + b64},
        {"type": "image", "image_url": {"url": http_server.url("keys_a.png")}},
    ]
    images, videos = vlutils.process_vision_info([{"role": "user", "content": items}])
    assert videos is None and len(images) == len(items)
    for image in images:
        assert np.array_equal(np.asarray(image), expected)


def test_video_keys_are_equivalent(tmp_path, http_server):
    name = "h264_320x240_30fps.mp4"
    raw = open(fixture(name), "rb").read()
    (http_server.root / "keys_v.mp4").write_bytes(raw)
    frames = [str(tmp_path / f"f{i}.png") for i in range(3)]
    for i, frame in enumerate(frames):
        open(frame, "wb").write(_png(10 + i))
    opts = {"nframes": 4}
    expected = fetch_video({"video": fixture(name), **opts})
    for item in (
        {"type": "video", "path": fixture(name), **opts},
        {"type": "video", "url": http_server.url("keys_v.mp4"), **opts},
        {"type": "video", "base64": base64.b64encode(raw).decode(), **opts},
    ):
        _, videos = vlutils.process_vision_info([{"role": "user", "content": [item]}])
        assert torch.equal(videos[0], expected), item.keys()
    by_key = fetch_video({"type": "video", "url": frames})
    assert torch.equal(by_key, fetch_video({"video": frames}))


def test_base64_key_is_never_a_path_and_obeys_safe_mode(tmp_path):
    tiny = base64.b64encode(_png(2, size=(56, 56))).decode()
    assert vlutils.fetch_image({"type": "image", "base64": tiny}).size == (56, 56)
    with pytest.raises(vlutils.VisionInputError):
        vlutils.fetch_image({"type": "image", "base64": "/etc/passwd"})  # not base64: refused, not opened
    with vlutils.policy.use(vlutils.SafetyPolicy(allowed_schemes={"https", "data"})):
        with pytest.raises(UnsafeSourceError, match="base64"):
            vlutils.fetch_image({"type": "image", "base64": tiny})
        assert vlutils.fetch_image({"type": "image", "base64": "data:image/png;base64," + tiny}).size == (56, 56)
    with vlutils.policy.use(vlutils.SafetyPolicy(allowed_schemes={"https"})):
        with pytest.raises(UnsafeSourceError):
            vlutils.process_vision_info([{"role": "user", "content": [{"type": "image", "path": str(tmp_path)}]}])


def test_item_without_any_source_key_is_an_error():
    with pytest.raises(vlutils.VisionInputError, match="message 0, item 0"):
        vlutils.process_vision_info([{"role": "user", "content": [{"type": "video", "fps": 2}]}])


# ------------------------------------------------------------------- Windows URIs

WINDOWS_CASES = [
    ("file:///C:/dir/x.jpg", "C:\\dir\\x.jpg"),
    ("file://C:\\dir\\x.jpg", "C:\\dir\\x.jpg"),
    ("file://C:/dir/sub/x%20y.jpg", "C:\\dir\\sub\\x y.jpg"),
    ("file:///d:/a%23b/c.png", "d:\\a#b\\c.png"),
    ("file://localhost/C:/x.jpg", "C:\\x.jpg"),
    ("file:///C:\\mixed/sep\\x.jpg", "C:\\mixed\\sep\\x.jpg"),
    ("file://server/share/dir/x.jpg", "\\\\server\\share\\dir\\x.jpg"),
]


@pytest.mark.parametrize("uri, expected", WINDOWS_CASES)
def test_windows_file_uris(uri, expected):
    assert windows_file_uri_to_path(uri) == expected
    assert file_uri_to_path(uri, os_name="nt") == expected


def test_posix_file_uris_unchanged(tmp_path):
    target = tmp_path / "a b.png"
    target.write_bytes(b"x")
    assert file_uri_to_path(target.as_uri(), os_name="posix") == str(target)
    assert file_uri_to_path("file:///C:/dir/x.jpg", os_name="posix") == "/C:/dir/x.jpg"


# ----------------------------------------------------------------------- timestamps


def _frames(tmp_path, count: int, size=(64, 48)) -> list[str]:
    paths = []
    for i in range(count):
        path = tmp_path / f"frame{i}.png"
        path.write_bytes(_png(100 + i, size))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("timestamps", [
    [0.0, 0.5, 1.0, 1.5],
    [3.2, 3.7, 4.9, 6.0, 8.25],            # odd count, uneven, not from 0
    [0.1, 0.43, 0.9],
    [12.0],
])
def test_frame_list_timestamps(tmp_path, timestamps):
    frames = _frames(tmp_path, len(timestamps))
    ele = {"video": frames, "timestamps": timestamps}
    (video, md), sample_fps = fetch_video(ele, return_video_sample_fps=True, return_video_metadata=True)
    n = len(timestamps)
    fps = (n - 1) / (timestamps[-1] - timestamps[0]) if n > 1 else 2.0
    assert sample_fps == pytest.approx(fps, rel=1e-12) and md["fps"] == sample_fps
    padded = timestamps + [timestamps[-1]] * (len(video) - n)
    assert len(md["frames_indices"]) == len(video) == n + n % 2
    assert [i / md["fps"] for i in md["frames_indices"]] == pytest.approx(padded, abs=1e-9)
    assert md.info["timestamps"] == padded
    # the frames themselves are those of the reference (timestamps only change the times)
    assert torch.equal(video, fetch_video({"video": frames}))


def test_timestamps_reach_qwen3_prompt_and_qwen25_seconds(tmp_path):
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    from _tiny_tokenizer import tiny_qwen_tokenizer

    timestamps = [1.0, 1.4, 2.6, 3.0, 3.3, 5.05]
    frames = _frames(tmp_path, len(timestamps))
    messages = [{"role": "user", "content": [{"type": "video", "video": frames, "timestamps": timestamps},
                                             {"type": "text", "text": "What happens?"}]}]
    tok = tiny_qwen_tokenizer()
    inputs = vlutils.build_inputs(messages, tok, "qwen3_vl")
    text = tok.decode(inputs["input_ids"][0].tolist(), skip_special_tokens=False)
    # independent derivation: mean of each pair of given times, formatted as transformers does
    expected = [f"<{(timestamps[i] + timestamps[i + 1]) / 2:.1f} seconds>" for i in range(0, 6, 2)]
    found = [part.split(">")[0] + ">" for part in text.split("<")[1:] if "seconds>" in part]
    assert ["<" + f for f in found] == expected
    # and transformers' own formula on the returned metadata gives the same
    _, videos = vlutils.process_vision_info(messages, return_video_metadata=True)
    md = videos[0][1]
    ref = Qwen3VLProcessor._calculate_timestamps(None, list(md["frames_indices"]), md["fps"], 2)
    assert [f"<{t:.1f} seconds>" for t in ref] == expected
    q25 = vlutils.build_inputs(messages, tok, "qwen2_5_vl")
    fps = (len(timestamps) - 1) / (timestamps[-1] - timestamps[0])
    assert q25["second_per_grid_ts"].tolist() == pytest.approx([2 / fps])
    _, _, kwargs = vlutils.process_vision_info(messages, return_video_kwargs=True)
    assert kwargs["fps"] == pytest.approx([fps])


@pytest.mark.parametrize("timestamps, reason", [
    ([0.0, 1.0], "2 value"),
    ([0.0, 1.0, 2.0, 3.0], "4 value"),
    ([0.0, 1.0, 1.0], "strictly increasing"),
    ([0.0, 2.0, 1.0], "strictly increasing"),
    ([0.0, float("nan"), 2.0], "finite"),
    ([0.0, 1.0, math.inf], "finite"),
    ([0.0, "1", 2.0], "finite"),
    ([0.0, True, 2.0], "finite"),
    ("0,1,2", "list"),
    (3.0, "list"),
])
def test_bad_timestamps(tmp_path, timestamps, reason):
    frames = _frames(tmp_path, 3)
    with pytest.raises(InvalidOptionError, match=reason) as info:
        vlutils.process_vision_info(
            [{"role": "user", "content": [{"type": "video", "video": frames, "timestamps": timestamps}]}]
        )
    assert "message 0, item 0" in str(info.value) and "list of 3 frames" in str(info.value)
    with pytest.raises(InvalidOptionError, match="frame lists only"):
        fetch_video({"video": fixture("h264_320x240_30fps.mp4"), "timestamps": [0.0]})


def test_without_timestamps_metadata_is_the_reference(tmp_path):
    vp = reference_module()
    frames = _frames(tmp_path, 5)
    for ele in ({"video": frames}, {"video": frames, "sample_fps": 3.0, "raw_fps": 30}):
        (ref_video, ref_md), ref_fps = vp.fetch_video(dict(ele), return_video_sample_fps=True,
                                                      return_video_metadata=True)
        (video, md), fps = fetch_video(dict(ele), return_video_sample_fps=True, return_video_metadata=True)
        assert dict(md) == ref_md and fps == ref_fps and torch.equal(video, ref_video)


def test_patch_grid_option_is_upstream_fe12058(tmp_path, monkeypatch):
    """Off: 0.0.14. On: upstream's fix, reproduced by making the reference's per-frame
    fetch_image receive image_patch_size instead of its doubled factor (the one-line change)."""
    vp = reference_module()
    frames = _frames(tmp_path, 4, size=(150, 90))  # 56-grid and 28-grid round differently here
    ele = {"video": frames}
    ref_014 = vp.fetch_video(dict(ele))
    assert torch.equal(fetch_video(dict(ele)), ref_014)
    original = vp.fetch_image
    monkeypatch.setattr(vp, "fetch_image", lambda e, size=14: original(e, size // 2))
    upstream = vp.fetch_video(dict(ele))
    got = fetch_video(dict(ele), frames_patch_grid=True)
    assert got.shape == upstream.shape and torch.equal(got, upstream)
    assert not (got.shape == ref_014.shape and torch.equal(got, ref_014))
    _, videos = vlutils.process_vision_info([{"role": "user", "content": [{"type": "video", **ele}]}],
                                            frames_patch_grid=True)
    assert torch.equal(videos[0], upstream)


def test_cli_shows_timestamps(tmp_path):
    import json

    from vlutils.cli import format_table, run

    frames = _frames(tmp_path, 3)
    messages = tmp_path / "m.json"
    messages.write_text(json.dumps([{"role": "user", "content": [
        {"type": "video", "video": frames, "timestamps": [0.5, 1.25, 2.0]},
        {"type": "video", "path": fixture("h264_320x240_30fps.mp4"), "nframes": 4},
    ]}]))
    report = run(str(messages))
    timed, plain = report["items"]
    assert timed["timestamps"] == [0.5, 1.25, 2.0, 2.0] and timed["sample_fps"] == pytest.approx(4 / 3, abs=1e-4)
    assert [i / timed["fps"] for i in timed["frames_indices"]] == pytest.approx(timed["timestamps"])
    assert "timestamps" not in plain and plain["kind"] == "video"
    assert "timestamps (s): 0.5, 1.25, 2, 2" in format_table(report)
