"""vlutils.grounding coordinate maps against an independent statement of each generation's
published convention, over random image sizes and smart-resize settings.

The statement below is written from QwenLM's code, not from vlutils:
- Qwen-VL tokenizer ``draw_bbox_on_latest_picture`` and the Qwen3-VL 2d_grounding cookbook:
  ``int(x / 1000 * width)``;
- Qwen2.5-VL spatial_understanding cookbook: ``int(x / input_width * width)`` with
  ``input_width = image_grid_thw[w] * 14``;
- qwen-vl-finetune/tools/process_bbox.ipynb: ``round(x / w * 1000)`` clamped to [0, 1000]
  (Qwen2-VL, reused for Qwen3-VL) and ``round(x * new_w / w)`` clamped to [0, new_w - 1]
  (Qwen2.5-VL, with qwen-vl-utils' smart_resize).
Resized sizes come from qwen-vl-utils 0.0.14 itself.
"""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image
from qwen_vl_utils import fetch_image as ref_fetch_image
from qwen_vl_utils import smart_resize as ref_smart_resize

from vlutils import grounding
from vlutils.errors import InvalidOptionError
from vlutils.image import load_image_item

RELATIVE = ("qwen_vl", "qwen2_vl", "qwen3_vl", "qwen3_5")
TOP = {"qwen_vl": 999, "qwen2_vl": 1000, "qwen3_vl": 1000, "qwen3_5": 1000}


def answer_text(model_type: str, label: str, box: list[int]) -> str:
    """How each generation prints one labelled box (written out by hand)."""
    x1, y1, x2, y2 = box
    if model_type == "qwen_vl":
        return f"<ref>{label}</ref><box>({x1},{y1}),({x2},{y2})</box>"
    if model_type == "qwen2_vl":
        return f"<|object_ref_start|>{label}<|object_ref_end|><|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"
    return f'```json\n[\n\t{{"bbox_2d": [{x1}, {y1}, {x2}, {y2}], "label": "{label}"}}\n]\n```'


def random_case(rng: random.Random):
    """(width, height, min_pixels, max_pixels, patch) that smart_resize accepts."""
    while True:
        width, height = rng.randint(1, 5000), rng.randint(1, 5000)
        if max(width, height) / min(width, height) < 150:
            break
    patch = rng.choice((14, 16))
    factor = patch * 2
    min_pixels = rng.choice((None, 4 * factor * factor, rng.randint(1, 400) * factor * factor))
    max_pixels = rng.choice((None, 1280 * factor * factor, rng.randint(400, 20000) * factor * factor))
    return width, height, min_pixels, max_pixels, patch


def reference_resized(width, height, min_pixels, max_pixels, patch):
    factor = patch * 2
    h, w = ref_smart_resize(
        height, width, factor=factor,
        min_pixels=min_pixels if min_pixels is not None else 4 * factor * factor,
        max_pixels=max_pixels if max_pixels is not None else 16384 * factor * factor,
    )
    return w, h


@pytest.mark.parametrize("model_type", grounding.MODEL_TYPES)
def test_model_answer_to_pixels_matches_the_cookbooks(model_type):
    rng = random.Random(f"to-image-{model_type}")
    for _ in range(150):
        width, height, min_pixels, max_pixels, patch = random_case(rng)
        rw, rh = reference_resized(width, height, min_pixels, max_pixels, patch)
        frame = (1000, 1000) if model_type in RELATIVE else (rw, rh)
        top = (TOP[model_type],) * 2 if model_type in RELATIVE else (rw - 1, rh - 1)
        xs = sorted(rng.randint(0, top[0]) for _ in range(2))
        ys = sorted(rng.randint(0, top[1]) for _ in range(2))
        box = [xs[0], ys[0], xs[1], ys[1]]
        [obj] = grounding.parse(answer_text(model_type, "a cat", box), model_type)
        assert obj["label"] == "a cat" and obj["box"] == tuple(box)
        resized = grounding.model_input_size((width, height), min_pixels=min_pixels, max_pixels=max_pixels,
                                             image_patch_size=patch)
        assert resized == (rw, rh)
        [px] = grounding.to_image([obj], model_type, (width, height), resized)
        expected = [int(v / frame[i % 2] * (width, height)[i % 2]) for i, v in enumerate(box)]
        assert all(0 <= a - b < 1 for a, b in zip(px["box"], expected)), (px, expected)
        # exact inverse on the model's integer grid
        assert grounding.to_model([px], model_type, (width, height), resized)[0]["box"] == tuple(box)


@pytest.mark.parametrize("model_type", grounding.MODEL_TYPES)
def test_pixels_to_model_matches_the_official_tool_and_round_trips(model_type):
    rng = random.Random(f"to-model-{model_type}")
    for _ in range(150):
        width, height, min_pixels, max_pixels, patch = random_case(rng)
        rw, rh = reference_resized(width, height, min_pixels, max_pixels, patch)
        size = (width, height)
        # pixels anywhere, including a little outside the image (clamping)
        p = [rng.uniform(-0.05, 1.05) * size[i % 2] for i in range(4)]
        box = [min(p[0], p[2]), min(p[1], p[3]), max(p[0], p[2]), max(p[1], p[3])]
        [m] = grounding.to_model([{"label": None, "box": box}], model_type, size, (rw, rh))
        if model_type in RELATIVE:
            official = [max(0, min(round(v / size[i % 2] * 1000), TOP[model_type])) for i, v in enumerate(box)]
        else:
            official = [max(0, min(round(v * (rw, rh)[i % 2] / size[i % 2]), (rw, rh)[i % 2] - 1))
                        for i, v in enumerate(box)]
        assert all(abs(a - b) <= 1 for a, b in zip(m["box"], official)), (m, official)
        assert all(isinstance(v, int) for v in m["box"])
        [back] = grounding.to_image([m], model_type, size, (rw, rh))
        step = grounding.quantisation_step(model_type, size, (rw, rh))
        for i, v in enumerate(box):
            clamped = min(max(v, 0), size[i % 2])
            assert abs(back["box"][i] - clamped) <= step[i % 2] + 1e-6, (i, v, back, step)
            if 0 <= v <= size[i % 2] - step[i % 2]:  # away from clamping: half a step
                assert abs(back["box"][i] - v) <= step[i % 2] / 2 + 1e-6


def test_points_and_reversed_corners():
    objs = [{"label": "p", "point": (500, 250)}, {"label": "b", "box": (800, 900, 100, 200)}]
    px = grounding.to_image(objs, "qwen3_vl", (640, 480))
    assert px[0]["point"] == (320.0, 120.0)
    assert px[1]["box"] == (64.0, 96.0, 512.0, 432.0)  # ordered, like the cookbooks' swap
    assert objs[1]["box"] == (800, 900, 100, 200)  # input untouched
    assert grounding.to_model(px, "qwen3_vl", (640, 480)) == [
        {"label": "p", "point": (500, 250)}, {"label": "b", "box": (100, 200, 800, 900)}]
    clipped = grounding.to_image([{"label": None, "box": (-10, 0, 1100, 1000)}], "qwen3_vl", (100, 50), clip=True)
    assert clipped[0]["box"] == (0.0, 0.0, 100.0, 50.0)


def test_resized_size_helpers_agree_with_the_reference_pipeline():
    """model_input_size == what qwen-vl-utils and vlutils resize to == image_grid_thw * patch."""
    from transformers import Qwen2VLImageProcessor

    rng = random.Random("grid")
    for _ in range(6):
        width, height = rng.randint(20, 900), rng.randint(20, 900)
        patch = rng.choice((14, 16))
        factor = patch * 2
        min_pixels, max_pixels = 4 * factor * factor, rng.randint(16, 600) * factor * factor
        buf = io.BytesIO()
        Image.new("RGB", (width, height), (10, 200, 30)).save(buf, format="PNG")
        ele = {"image": buf.getvalue(), "min_pixels": min_pixels, "max_pixels": max_pixels}
        expected = grounding.model_input_size((width, height), min_pixels=min_pixels, max_pixels=max_pixels,
                                              image_patch_size=patch)
        ours, original = load_image_item(dict(ele), image_patch_size=patch)
        reference = ref_fetch_image({"image": Image.open(io.BytesIO(ele["image"])), "min_pixels": min_pixels,
                                     "max_pixels": max_pixels}, image_patch_size=patch)
        assert ours.size == reference.size == expected and original == (width, height)
        processor = Qwen2VLImageProcessor(patch_size=patch, merge_size=2, min_pixels=min_pixels, max_pixels=max_pixels)
        grid = processor(images=[reference], return_tensors="pt")["image_grid_thw"]
        assert grounding.resized_size_from_grid(grid, patch_size=patch) == expected
        assert grounding.resized_size_from_grid(grid.tolist()[0], patch_size=patch) == expected
    fixed = grounding.model_input_size((1000, 500), resized_width=333, resized_height=222)
    assert fixed == (336, 224)


def _jpeg_with_orientation(size, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_upright_size_is_the_size_vlutils_feeds(tmp_path, orientation):
    data = _jpeg_with_orientation((64, 40), orientation)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    expected = (40, 64) if orientation in (6, 8) else (64, 40)
    _, original = load_image_item({"image": str(path)})
    assert original == expected
    for source in (str(path), path, f"file://{path}", data, Image.open(io.BytesIO(data))):
        assert grounding.upright_size(source) == expected


def test_bad_arguments_raise_typed_errors():
    obj = [{"label": None, "box": (1, 2, 3, 4)}]
    with pytest.raises(InvalidOptionError, match="resized_size"):
        grounding.to_image(obj, "qwen2_5_vl", (100, 100))
    with pytest.raises(InvalidOptionError, match="unknown model_type"):
        grounding.to_image(obj, "llava", (100, 100))
    with pytest.raises(InvalidOptionError, match="image_size"):
        grounding.to_image(obj, "qwen3_vl", (0, 100))
    with pytest.raises(InvalidOptionError, match="object 0"):
        grounding.to_model([{"box": (1, 2, 3)}], "qwen3_vl", (100, 100))
    with pytest.raises(InvalidOptionError, match="object 0"):
        grounding.to_image([{"point": (1, float("nan"))}], "qwen3_vl", (100, 100))
    with pytest.raises(InvalidOptionError, match="both"):
        grounding.to_image([{"box": (1, 2, 3, 4), "point": (1, 2)}], "qwen3_vl", (100, 100))
    with pytest.raises(InvalidOptionError, match="image_grid_thw"):
        grounding.resized_size_from_grid([[1, 2, 3]], index=1)
    for spelling in ("Qwen2.5-VL", "qwen2-5-vl", " QWEN2_5_VL "):
        assert grounding.get_convention(spelling).model_type == "qwen2_5_vl"
    assert grounding.get_convention("Qwen3.5").model_type == "qwen3_5"


def test_lazy_module_export():
    """``import vlutils`` does not load grounding; ``vlutils.grounding`` and the import statement do."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, vlutils\n"
        "assert 'vlutils.grounding' not in sys.modules\n"
        "g = vlutils.grounding\n"
        "import vlutils.grounding as g2\n"
        "from vlutils import grounding as g3\n"
        "assert g is g2 is g3 and 'grounding' in dir(vlutils) and 'grounding' in vlutils.__all__\n"
        "assert 'torch' not in sys.modules\n"
        "print(g.parse('[{\"bbox_2d\": [1, 2, 3, 4]}]', 'qwen3_vl'))\n"
    )
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[{'label': None, 'box': (1, 2, 3, 4)}]"
