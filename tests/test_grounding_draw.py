"""vlutils.grounding.draw renders where it should, on any background and mode, and the CLI
turns an answer into a picture."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlutils import grounding
from vlutils.errors import InvalidOptionError
from vlutils.grounding.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _has(array: np.ndarray, color) -> bool:
    return bool((array[..., :3] == np.array(color, dtype=array.dtype)).all(axis=-1).any())


@pytest.mark.parametrize("background", [0, 255, 128])
def test_box_edges_carry_the_label_colour_and_a_contrasting_halo(background):
    image = Image.new("RGB", (200, 120), (background,) * 3)
    before = np.asarray(image).copy()
    out = grounding.draw(image, [{"label": "cat", "box": (40, 30, 160, 100)}], line_width=3)
    assert np.array_equal(np.asarray(image), before)  # input untouched
    pixels = np.asarray(out)
    color = grounding.label_color("cat")
    # the coloured band sits on the box edges (PIL draws the width inwards from the corners)
    for y, x in ((30, 100), (32, 100), (100 - 2, 100), (60, 40), (60, 160 - 2)):
        assert tuple(pixels[y, x]) == color, (y, x, pixels[y, x])
    # a halo one pixel outside and one inside
    halo = (0, 0, 0) if sum(w * c for w, c in zip((0.299, 0.587, 0.114), color)) > 128 else (255, 255, 255)
    assert tuple(pixels[60, 39]) == halo and tuple(pixels[60, 43]) == halo
    # far from the box: untouched
    assert tuple(pixels[60, 100]) == (background,) * 3 and tuple(pixels[5, 195]) == (background,) * 3
    # the label box, filled with the colour, above the top-left corner
    assert _has(pixels[:30, 40:120], color)


def test_points_labels_and_modes():
    objs = [{"label": "ball", "point": (50.4, 60.6)}, {"label": None, "box": (10, 10, 30, 30)},
            {"label": "edge", "box": (180, -20, 260, 90)}, {"label": "rev", "box": (150, 110, 100, 80)}]
    for mode in ("RGB", "RGBA", "L", "P", "LA", "1", "CMYK", "I;16"):
        image = Image.new("RGB", (200, 120), (90, 90, 90)).convert(mode)
        out = grounding.draw(image, objs)
        assert out.size == image.size and out is not image
        assert out.mode == ("RGBA" if mode in ("RGBA", "LA") else "RGB")
        pixels = np.asarray(out)
        assert tuple(pixels[61, 50][:3]) == grounding.label_color("ball")  # dot centre
        assert _has(pixels[50:72, 40:62], (255, 255, 255)) and _has(pixels[50:72, 40:62], (0, 0, 0))
        assert _has(pixels[:, 53:120], grounding.label_color("ball"))  # label right of the point
        assert tuple(pixels[10, 20][:3]) == grounding.label_color(None)
        assert _has(pixels, grounding.label_color("rev"))
        if mode == "RGBA":
            assert pixels[..., 3].min() == 255


def test_colours_are_deterministic_per_label():
    assert grounding.label_color("dog") == grounding.label_color("dog")
    assert len({grounding.label_color(f"class {i}") for i in range(100)}) == len(grounding.PALETTE)
    code = "from vlutils import grounding; print(grounding.label_color('dog'))"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONHASHSEED="123")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == str(grounding.label_color("dog"))


def test_draw_rejects_bad_input():
    image = Image.new("RGB", (10, 10))
    with pytest.raises(InvalidOptionError):
        grounding.draw("not an image", [])
    with pytest.raises(InvalidOptionError, match="object 0"):
        grounding.draw(image, [{"box": (1, 2, float("inf"), 4)}])
    with pytest.raises(InvalidOptionError, match="font"):
        grounding.draw(image, [{"label": "x", "box": (1, 2, 3, 4)}], font="/no/such/font.ttf")
    assert grounding.draw(image, [{"label": "x", "box": (-1e30, 2, 1e30, 4)}]).size == (10, 10)


def _photo(tmp_path, size=(320, 240), orientation=1):
    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, exif=exif)
    return path


def test_cli_qwen2_5_vl_maps_resized_pixels_to_the_upright_original(tmp_path, capsys):
    path = _photo(tmp_path, (320, 240), orientation=6)  # stored landscape, shown portrait: 240x320
    resized = grounding.model_input_size((240, 320), max_pixels=100 * 28 * 28)
    rw, rh = resized
    answer = f'```json\n[{{"bbox_2d": [0, 0, {rw // 2}, {rh // 2}], "label": "top-left quarter"}}]\n```'
    out = tmp_path / "out.png"
    rc = main([str(path), "--model-type", "qwen2_5_vl", "--answer", answer, "--out", str(out),
               "--max-pixels", str(100 * 28 * 28)])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["image_size"] == [240, 320] and report["resized_size"] == [rw, rh]
    [obj] = report["objects"]
    assert obj["label"] == "top-left quarter"
    assert obj["box"] == pytest.approx([0, 0, (rw // 2) / rw * 240, (rh // 2) / rh * 320])
    drawn = Image.open(out)
    assert drawn.size == (240, 320)


def test_cli_as_a_module_with_an_answer_file(tmp_path):
    path = _photo(tmp_path)
    answer = tmp_path / "answer.txt"
    answer.write_text("<|object_ref_start|>noise<|object_ref_end|><|box_start|>(100,100),(500,500)<|box_end|>",
                      encoding="utf-8")
    out = tmp_path / "out.png"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "vlutils.grounding", str(path), "--model-type", "qwen2_vl",
                          "--answer-file", str(answer), "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["objects"] == [{"label": "noise", "box": [32.0, 24.0, 160.0, 120.0]}]
    pixels = np.asarray(Image.open(out))
    assert tuple(pixels[70, 32]) == grounding.label_color("noise")
    bad = subprocess.run([sys.executable, "-m", "vlutils.grounding", str(tmp_path / "missing.jpg"), "--model-type",
                          "qwen3_vl", "--answer", "[]", "--out", str(out)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "missing.jpg" in bad.stderr


def test_cli_without_objects_still_writes_the_picture(tmp_path, capsys):
    path = _photo(tmp_path)
    out = tmp_path / "same.png"
    assert main([str(path), "--model-type", "qwen3_vl", "--answer", "no cat here", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["objects"] == []
    assert Image.open(out).size == (320, 240)
    assert main([str(path), "--model-type", "llava", "--answer", "x", "--out", str(out)]) == 2
