"""vlutils.processor_inputs through transformers' own processors, on 4.57.6 (the venv) and
5.23 (.refs/tf523), each in a subprocess: grids, second_per_grid_ts, Qwen3-VL timestamps (in
the input ids) and pixels must equal build_inputs' (issue 13, item 6)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vlutils
from _refs import ROOT, reference_env
from _tiny_tokenizer import tiny_qwen_tokenizer
from _video_helpers import fixture
from vlutils.chat import format_chat

RUNNER = Path(__file__).resolve().parent / "reference_hf_inputs_runner.py"
MODEL_PATCH = {"qwen2_vl": 14, "qwen2_5_vl": 14, "qwen3_vl": 16}


def _png(path: Path, seed: int, size: tuple[int, int]) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def _conversations(tmp_path: Path, patch: int) -> list[list[dict]]:
    factor = patch * 2
    frames = [_png(tmp_path / f"f{i}.png", 50 + i, (90, 70)) for i in range(5)]
    small = _png(tmp_path / "small.png", 1, (120, 90))  # below Qwen3's 65536-pixel minimum
    large = _png(tmp_path / "large.png", 2, (900, 500))
    first = [
        {"role": "user", "content": [
            {"type": "image", "image": small},
            {"type": "video", "video": fixture("h264_320x240_30fps.mp4"), "fps": 2.0, "min_pixels": 16 * factor**2,
             "max_pixels": 64 * factor**2},
            {"type": "text", "text": "Compare them."},
        ]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [
            {"type": "image", "url": large, "max_pixels": 300 * factor**2},
            {"type": "video", "video": frames, "timestamps": [0.0, 0.7, 1.5, 2.0, 3.1]},
        ]},
    ]
    second = [{"role": "user", "content": [
        {"type": "video", "video": frames[:4]},
        {"type": "video", "path": fixture("vp9_30fps.webm"), "nframes": 6, "min_pixels": 32 * factor**2,
         "max_pixels": 120 * factor**2},
        {"type": "text", "text": "What happens?"},
    ]}]
    return [first, second]


def _cases(tmp_path: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """(media, cases for the runner, build_inputs' results for them). Media is fetched once per
    patch size and metadata mode (a MediaCache serves the repeats) and shipped as uint8."""
    tok = tiny_qwen_tokenizer()
    media, cases, expected = {}, [], []
    with vlutils.cache.use(vlutils.MediaCache(max_bytes=2**30)):
        for model_type, patch in MODEL_PATCH.items():
            for with_metadata in (True, False, "images only"):
                convs = _conversations(tmp_path, patch)
                if with_metadata == "images only":
                    convs = [[{"role": m["role"], "content": [c for c in m["content"] if c.get("type") != "video"]
                               if isinstance(m["content"], list) else m["content"]} for m in convs[0]]]
                images, videos, video_kwargs = vlutils.process_vision_info(
                    convs, return_video_kwargs=True, return_video_metadata=with_metadata, image_patch_size=patch)
                key = (patch, with_metadata)
                if key not in media:
                    media[key] = {
                        "images": [np.asarray(image) for image in images],
                        "videos": [(v[0].to(torch.uint8), dict(v[1])) if isinstance(v, tuple) else v.to(torch.uint8)
                                   for v in videos or []],
                    }
                variants = [video_kwargs] if with_metadata else [video_kwargs, None]  # None: nothing known
                for kwargs in variants:
                    expected.append(vlutils.build_inputs(convs, tok, model_type, images=images, videos=videos,
                                                         video_kwargs=kwargs))
                    cases.append({
                        "model_type": model_type,
                        "texts": [format_chat(c, model_type=model_type) for c in convs],
                        "media": list(media).index(key),
                        "video_kwargs": kwargs,
                    })
    return list(media.values()), cases, expected


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("processor_inputs")
    media, cases, expected = _cases(tmp_path)
    torch.save({"tokenizer_json": tiny_qwen_tokenizer().to_str(), "media": media, "cases": cases},
               tmp_path / "cases.pt")
    procs = {}
    for ref in ("venv", "tf523"):
        out = tmp_path / f"out_{ref}.pt"
        procs[ref] = (subprocess.Popen(
            [sys.executable, str(RUNNER), str(tmp_path / "cases.pt"), str(out)], env=reference_env(ref), cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        ), out)
    results = {}
    for ref, (proc, out) in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{ref} runner failed:\n{err[-4000:]}"
        results[ref] = torch.load(out, weights_only=False)
    return cases, expected, results


@pytest.mark.parametrize("ref, major", [("venv", "4."), ("tf523", "5.23")])
def test_processors_reproduce_build_inputs(outcomes, ref, major):
    cases, expected, results = outcomes
    got = results[ref]
    assert got["version"].startswith(major)
    tok = tiny_qwen_tokenizer()
    for case, ours, theirs in zip(cases, expected, got["results"]):
        where = f"{ref} {case['model_type']} video_kwargs={case['video_kwargs']}"
        assert torch.equal(theirs["input_ids"], ours["input_ids"]), where  # incl. Qwen3 <t seconds>
        assert torch.equal(theirs["attention_mask"], ours["attention_mask"]), where
        assert torch.equal(theirs["image_grid_thw"], ours["image_grid_thw"]), where
        torch.testing.assert_close(theirs["pixel_values"], ours["pixel_values"], rtol=0, atol=1e-6)
        if ours["pixel_values_videos"] is None:
            assert "pixel_values_videos" not in theirs, where
            continue
        assert torch.equal(theirs["video_grid_thw"], ours["video_grid_thw"]), where
        torch.testing.assert_close(theirs["pixel_values_videos"], ours["pixel_values_videos"], rtol=0, atol=1e-6)
        if "raw_input_ids" in theirs:  # 5.x Qwen3-VL on the template's wrapped pad: same timestamps
            for row in range(len(case["texts"])):
                raw = tok.decode(theirs["raw_input_ids"][row].tolist(), skip_special_tokens=False)
                mine = tok.decode(ours["input_ids"][row].tolist(), skip_special_tokens=False)
                assert re.findall(r"<[0-9.]+ seconds>", raw) == re.findall(r"<[0-9.]+ seconds>", mine), where
        if case["model_type"] == "qwen2_5_vl":
            torch.testing.assert_close(theirs["second_per_grid_ts"], ours["second_per_grid_ts"].double(),
                                       rtol=1e-9, atol=0)
    for keys in got["kwargs_keys"]:  # the fps list only for 4.x, and only with videos
        assert ("fps" in keys) == (ref == "venv" and "videos" in keys), keys


def test_expected_values_are_the_media_s_own(outcomes):
    """The reference side is not vacuous: the issue's example (max_pixels=64*28*28) keeps 864
    patches per video grid row set, Qwen2.5 seconds follow the sample fps (2 fps -> 1.0 s, the
    timestamped frame list -> 2 / ((5 - 1) / 3.1)), and Qwen3 prompts carry the given times."""
    cases, expected, _ = outcomes
    q25 = next(e for c, e in zip(cases, expected) if c["model_type"] == "qwen2_5_vl")
    grid = q25["video_grid_thw"][0].tolist()
    assert grid[1] * grid[2] <= 64 * 4  # one frame pair within the 64-token budget, not re-resized
    assert q25["second_per_grid_ts"].tolist()[:2] == pytest.approx([1.0, 2 / (4 / 3.1)])
    tok = tiny_qwen_tokenizer()
    q3_out = next(e for c, e in zip(cases, expected) if c["model_type"] == "qwen3_vl")
    text = tok.decode(q3_out["input_ids"][0].tolist(), skip_special_tokens=False)
    given = [0.0, 0.7, 1.5, 2.0, 3.1, 3.1]  # the frame list's times, padded with the last
    for i in range(0, 6, 2):
        assert f"<{(given[i] + given[i + 1]) / 2:.1f} seconds>" in text
