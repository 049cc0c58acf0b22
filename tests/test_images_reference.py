"""Differential tests: vlutils images against the installed qwen-vl-utils 0.0.14.

Every expected value comes from the reference (or, where vlutils deliberately
differs, from Pillow/numpy computed here): same output size and identical pixels.

Deliberate differences tested for their intended result:
* EXIF orientation is applied (expected: the reference run on
  ``ImageOps.exif_transpose(original)``);
* alpha modes other than RGBA (LA, PA, P with transparency) are composited on white
  (expected: the reference run on the image converted to RGBA, which it composites,
  and a numpy compositing check).
"""

from __future__ import annotations

import base64
import random
import shutil
import urllib.parse
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import vlutils
from vlutils.errors import VisionInputError

# The reference must be installed (test extra): a missing reference fails, never skips.
import qwen_vl_utils.vision_process as ref  # noqa: E402


# ----------------------------------------------------------------------------- media


def photo_array(width: int, height: int, seed: int) -> np.ndarray:
    """A photo-like HxWx3 uint8 array: smooth gradients, a few shapes and noise."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    c = rng.uniform(40, 215, size=(3, 3)).astype(np.float32)
    img = np.empty((height, width, 3), dtype=np.float32)
    for ch in range(3):
        img[..., ch] = c[ch, 0] + (c[ch, 1] - 128) * x + (c[ch, 2] - 128) * y
    for _ in range(4):  # rectangles of flat colour
        x0, x1 = sorted(rng.integers(0, width + 1, size=2))
        y0, y1 = sorted(rng.integers(0, height + 1, size=2))
        img[y0:y1, x0:x1] = rng.uniform(0, 255, size=3)
    img += rng.normal(0.0, 8.0, size=(height, width, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def alpha_array(width: int, height: int, seed: int) -> np.ndarray:
    """HxW uint8 alpha with fully transparent, fully opaque and partial regions."""
    rng = np.random.default_rng(seed)
    a = np.tile(np.linspace(0, 255, width, dtype=np.float32)[None, :], (height, 1))
    a[: height // 3] = 0
    a[-(height // 3) or height:] = 255
    a += rng.normal(0, 20, size=a.shape)
    return np.clip(a, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Spec:
    name: str
    width: int
    height: int
    mode: str  # what is stored in the file
    fmt: str
    big: bool = False


# name, size, stored mode, format. Sizes span 1 px to 4000+ px and ratios up to ~199.
SPECS = [
    Spec("tiny.png", 1, 1, "RGB", "PNG"),
    Spec("tiny.jpg", 3, 5, "RGB", "JPEG"),
    Spec("gray.png", 27, 29, "L", "PNG"),
    Spec("small.webp", 100, 100, "RGB", "WEBP"),
    Spec("rgba.webp", 64, 48, "RGBA", "WEBP"),
    Spec("vga.jpg", 640, 480, "RGB", "JPEG"),
    Spec("gray.jpg", 300, 200, "L", "JPEG"),
    Spec("cmyk.jpg", 320, 240, "CMYK", "JPEG"),
    Spec("palette.png", 200, 150, "P", "PNG"),
    Spec("rgba.png", 333, 222, "RGBA", "PNG"),
    Spec("i16.png", 257, 129, "I;16", "PNG"),
    Spec("anim.gif", 180, 120, "P", "GIF"),
    Spec("strip.png", 1000, 37, "RGB", "PNG"),
    Spec("tall.png", 5, 990, "RGB", "PNG"),
    Spec("wide.jpg", 1990, 10, "RGB", "JPEG"),
    Spec("mid.webp", 1500, 1100, "RGB", "WEBP"),
    Spec("wide4k.png", 4100, 21, "L", "PNG"),
    Spec("phone.jpg", 4032, 3024, "RGB", "JPEG", big=True),
    Spec("portrait.jpg", 1200, 4100, "RGB", "JPEG", big=True),
]
SPEC_BY_NAME = {s.name: s for s in SPECS}

# Deliberate differences: alpha modes other than RGBA, composited on white.
ALPHA_SPECS = [
    Spec("la.png", 150, 100, "LA", "PNG"),
    Spec("ptrans.png", 120, 90, "P+t", "PNG"),
    Spec("ptrans.gif", 90, 60, "P+t", "GIF"),
]


def seed_of(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def make_image(spec: Spec) -> Image.Image:
    rgb = photo_array(spec.width, spec.height, seed_of(spec.name))
    image = Image.fromarray(rgb)
    if spec.mode == "RGB":
        return image
    if spec.mode in ("L", "CMYK"):
        return image.convert(spec.mode)
    if spec.mode == "P":
        return image.quantize(64, method=Image.Quantize.MEDIANCUT)
    if spec.mode == "P+t":
        pal = image.quantize(16, method=Image.Quantize.MEDIANCUT)
        arr = np.asarray(pal).copy()
        arr[: spec.height // 2, : spec.width // 2] = 15  # index 15 is transparent
        pal = Image.fromarray(arr, "P")
        pal.putpalette(image.quantize(16, method=Image.Quantize.MEDIANCUT).getpalette())
        pal.info["transparency"] = 15
        return pal
    if spec.mode == "I;16":
        wide = rgb[..., 0].astype(np.uint16) * 257 // 180  # values up to ~364: some saturate
        return Image.fromarray(wide)
    alpha = Image.fromarray(alpha_array(spec.width, spec.height, seed_of(spec.name, "a")))
    if spec.mode == "RGBA":
        image.putalpha(alpha)
        return image
    if spec.mode == "LA":
        la = image.convert("L").convert("LA")
        la.putalpha(alpha)
        return la
    raise AssertionError(spec.mode)


def save(image: Image.Image, path: Path, fmt: str) -> None:
    kwargs = {"JPEG": {"quality": 90}, "WEBP": {"quality": 85}}.get(fmt, {})
    if "transparency" in image.info:
        kwargs["transparency"] = image.info["transparency"]
    image.save(path, fmt, **kwargs)


@pytest.fixture(scope="session")
def media(tmp_path_factory, http_server) -> dict[str, Path]:
    """All test images, written once; also copied into the HTTP server's root."""
    root = tmp_path_factory.mktemp("media")
    paths = {}
    for spec in SPECS + ALPHA_SPECS:
        path = root / spec.name
        save(make_image(spec), path, spec.fmt)
        paths[spec.name] = path
        if not spec.big:
            shutil.copy(path, http_server.root / spec.name)
    return paths


# ----------------------------------------------------------------------------- helpers


def assert_same(actual: Image.Image, expected: Image.Image) -> None:
    assert isinstance(actual, Image.Image)
    assert actual.mode == expected.mode == "RGB"
    assert actual.size == expected.size
    a, e = np.asarray(actual), np.asarray(expected)
    if not np.array_equal(a, e):
        diff = np.abs(a.astype(int) - e.astype(int))
        pytest.fail(f"pixels differ: {int((diff > 0).sum())} values, max diff {int(diff.max())}")


def reference_fetch(ele: dict, patch: int = 14):
    """Reference result, or the exception it raised."""
    try:
        return ref.fetch_image(dict(ele), image_patch_size=patch)
    except (ValueError, AssertionError) as exc:
        return exc


def check_against(ele: dict, expected, patch: int = 14) -> None:
    """vlutils.fetch_image(ele) equals ``expected`` (an image, or a reference exception:
    then vlutils must raise a VisionInputError)."""
    if isinstance(expected, BaseException):
        with pytest.raises(VisionInputError):
            vlutils.fetch_image(ele, image_patch_size=patch)
        return
    assert_same(vlutils.fetch_image(ele, image_patch_size=patch), expected)


def random_options(rng: random.Random, patch: int, kind: str) -> dict:
    factor = patch * 2
    if kind == "pixels":
        min_pixels = rng.choice([rng.randint(1, 5000), rng.randint(1, 40) * factor * factor, rng.randint(5000, 400_000)])
        max_pixels = min_pixels + rng.choice([0, rng.randint(0, 50_000), rng.randint(0, 2_000_000)])
        return {"min_pixels": min_pixels, "max_pixels": max_pixels}
    if kind == "resized":
        return {"resized_height": rng.randint(1, 1500), "resized_width": rng.randint(1, 1500)}
    return {}


def option_cases(spec: Spec):
    cases = [("default", 14), ("default", 16), ("pixels", 14), ("pixels", 16), ("resized", 14), ("resized", 16)]
    if spec.big:
        cases = [("default", 14), ("pixels", 16)]
    return cases


# ----------------------------------------------------------------------------- tests: paths and options


@pytest.mark.parametrize(
    "name,kind,patch",
    [(s.name, k, p) for s in SPECS for k, p in option_cases(s)],
)
def test_path_matches_reference(media, name, kind, patch):
    rng = random.Random(seed_of(name, kind, patch))
    options = random_options(rng, patch, kind)
    ele = {"image": str(media[name]), **options}
    check_against(ele, reference_fetch(ele, patch), patch)


def test_many_random_options_small_image(media):
    """Dozens of random min/max_pixels and resized_* on one small image, both patch sizes."""
    rng = random.Random(1234)
    path = str(media["vga.jpg"])
    image = Image.open(path)
    image.load()
    for i in range(40):
        patch = rng.choice([14, 16])
        options = random_options(rng, patch, rng.choice(["pixels", "resized"]))
        expected = reference_fetch({"image": image.copy(), **options}, patch)
        check_against({"image": path, **options}, expected, patch)


def test_smart_resize_matches_reference():
    rng = random.Random(7)
    for _ in range(3000):
        factor = rng.choice([28, 32])
        h = rng.choice([rng.randint(1, 64), rng.randint(1, 5000), rng.randint(1, 20000)])
        w = rng.choice([rng.randint(1, 64), rng.randint(1, 5000), max(1, h * rng.randint(1, 199) // 100)])
        kwargs = {}
        if rng.random() < 0.5:
            lo = rng.randint(1, 2_000_000)
            kwargs = {"min_pixels": lo, "max_pixels": lo + rng.randint(0, 20_000_000)}
        try:
            expected = ref.smart_resize(h, w, factor, **kwargs)
        except (ValueError, AssertionError):
            with pytest.raises(VisionInputError):
                vlutils.smart_resize(h, w, factor, **kwargs)
            continue
        assert vlutils.smart_resize(h, w, factor, **kwargs) == expected, (h, w, factor, kwargs)


def test_constants_match_reference():
    for name in (
        "MAX_RATIO SPATIAL_MERGE_SIZE IMAGE_MIN_TOKEN_NUM IMAGE_MAX_TOKEN_NUM VIDEO_MIN_TOKEN_NUM "
        "VIDEO_MAX_TOKEN_NUM FPS FRAME_FACTOR FPS_MIN_FRAMES FPS_MAX_FRAMES MAX_NUM_WORKERS_FETCH_VIDEO MODEL_SEQ_LEN"
    ).split():
        assert getattr(vlutils, name) == getattr(ref, name), name


# ----------------------------------------------------------------------------- tests: source kinds

SOURCE_IMAGES = ["tiny.png", "gray.png", "rgba.webp", "vga.jpg", "cmyk.jpg", "palette.png", "rgba.png", "anim.gif", "strip.png"]


def as_data_uri(path: Path, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.mark.parametrize("name", SOURCE_IMAGES)
@pytest.mark.parametrize("patch", [14, 16])
def test_byte_sources_match_reference(media, http_server, name, patch):
    """Path, file:// URI, http URL, data URI, bare base64 and bytes all give the
    reference's result for the same file (the reference reads the last two only as a path)."""
    path = media[name]
    expected = reference_fetch({"image": str(path)}, patch)
    assert not isinstance(expected, BaseException)
    mime = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}[path.suffix[1:]]
    # the reference itself handles these forms: check it agrees with itself first
    for supported in ("file://" + str(path), http_server.url(name), as_data_uri(path, mime)):
        assert_same(ref.fetch_image({"image": supported}, image_patch_size=patch), expected)
    sources = [
        str(path),
        path,  # os.PathLike
        "file://" + str(path),
        "file://" + urllib.parse.quote(str(path)),
        http_server.url(name),
        as_data_uri(path, mime),
        base64.b64encode(path.read_bytes()).decode(),
        path.read_bytes(),
    ]
    for source in sources:
        assert_same(vlutils.fetch_image({"image": source}, image_patch_size=patch), expected)
    # image_url, as a string and in the OpenAI object form
    assert_same(vlutils.fetch_image({"type": "image_url", "image_url": http_server.url(name)}, patch), expected)
    assert_same(vlutils.fetch_image({"type": "image_url", "image_url": {"url": str(path)}}, patch), expected)
    assert_same(ref.fetch_image({"type": "image_url", "image_url": str(path)}, image_patch_size=patch), expected)


def test_file_uri_percent_encoded(media, tmp_path):
    """A file:// URI is percent-decoded; the raw form with a space also works (as in the reference)."""
    path = tmp_path / "dir with space" / "img #1 é.png"
    path.parent.mkdir()
    shutil.copy(media["rgba.png"], path)
    expected = ref.fetch_image({"image": str(path)})
    assert_same(vlutils.fetch_image({"image": "file://" + urllib.parse.quote(str(path))}), expected)
    assert_same(vlutils.fetch_image({"image": "file://" + str(path)}), expected)
    assert_same(vlutils.fetch_image({"image": Path(path).as_uri()}), expected)


@pytest.mark.parametrize("name", SOURCE_IMAGES)
@pytest.mark.parametrize("patch", [14, 16])
def test_pil_source_matches_reference(media, name, patch):
    expected = ref.fetch_image({"image": Image.open(media[name])}, image_patch_size=patch)
    assert_same(vlutils.fetch_image({"image": Image.open(media[name])}, image_patch_size=patch), expected)
    # already-loaded images, and the input object is left untouched
    loaded = Image.open(media[name])
    loaded.load()
    before = np.asarray(loaded).copy()
    assert_same(vlutils.fetch_image({"image": loaded}, image_patch_size=patch), expected)
    assert np.array_equal(np.asarray(loaded), before)


@pytest.mark.parametrize("name", ["vga.jpg", "rgba.png", "strip.png", "tall.png", "gray.png"])
@pytest.mark.parametrize("patch", [14, 16])
def test_array_and_tensor_sources_match_reference(media, name, patch):
    """numpy HWC and torch CHW/HWC uint8 give the reference's result for the equivalent PIL image."""
    opened = Image.open(media[name])
    array = np.asarray(opened.convert("RGBA" if opened.mode == "RGBA" else "RGB")).copy()
    expected = ref.fetch_image({"image": Image.fromarray(array)}, image_patch_size=patch)
    hwc = torch.from_numpy(array.copy())
    sources = [array, hwc, hwc.permute(2, 0, 1).contiguous(), hwc.permute(2, 0, 1)]
    for source in sources:
        assert_same(vlutils.fetch_image({"image": source}, image_patch_size=patch), expected)
    if opened.mode in ("L", "RGB"):
        gray = np.asarray(opened.convert("L")).copy()
        expected_gray = ref.fetch_image({"image": Image.fromarray(gray)}, image_patch_size=patch)
        for source in (gray, gray[..., None], torch.from_numpy(gray.copy())[None]):
            assert_same(vlutils.fetch_image({"image": source}, image_patch_size=patch), expected_gray)


@pytest.mark.parametrize("height,width", [(1, 1), (7, 1), (1, 9), (2, 5)])
def test_tiny_chw_tensor_is_read_as_chw(height, width):
    """A torch tensor (3, H, W) is CHW, also when the image is 1 px wide, which makes the
    last dimension 1 (a 1-channel HWC reading would be a 3-row gray image). Shapes such
    as (3, 3, 3) or (3, 5, 4) are genuinely ambiguous and not tested."""
    rng = np.random.default_rng(seed_of("chw", height, width))
    hwc = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    expected = ref.fetch_image({"image": Image.fromarray(hwc)})
    chw = torch.from_numpy(hwc).permute(2, 0, 1)
    assert_same(vlutils.fetch_image({"image": chw}), expected)


def test_array_with_options(media):
    rng = random.Random(99)
    array = np.asarray(Image.open(media["vga.jpg"]).convert("RGB")).copy()
    for _ in range(10):
        patch = rng.choice([14, 16])
        options = random_options(rng, patch, rng.choice(["pixels", "resized"]))
        expected = reference_fetch({"image": Image.fromarray(array), **options}, patch)
        check_against({"image": array, **options}, expected, patch)
        check_against({"image": torch.from_numpy(array).permute(2, 0, 1), **options}, expected, patch)


# ----------------------------------------------------------------------------- tests: process_vision_info


def build_messages(media, http_server, names, rng):
    """One user message with text and images given in assorted source forms."""
    content = [{"type": "text", "text": "Describe these."}]
    for i, name in enumerate(names):
        path = media[name]
        form = i % 5
        if form == 0:
            item = {"type": "image", "image": str(path)}
        elif form == 1:
            item = {"type": "image", "image": http_server.url(name)}
        elif form == 2:
            item = {"type": "image_url", "image_url": "file://" + str(path)}
        elif form == 3:
            item = {"type": "image", "image": as_data_uri(path)}
        else:
            item = {"type": "image", "image": Image.open(path)}
        if rng.random() < 0.5:
            item.update(random_options(rng, 14, "pixels"))
        content.append(item)
        content.append({"type": "text", "text": f"image {i}"})
    return [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": content}]


def fresh(messages):
    """A copy whose PIL images are reopened (the reference may consume them)."""
    out = []
    for msg in messages:
        msg = dict(msg)
        if isinstance(msg["content"], list):
            msg["content"] = [
                {**e, "image": Image.open(e["image"].filename)} if isinstance(e.get("image"), Image.Image) else dict(e)
                for e in msg["content"]
            ]
        out.append(msg)
    return out


def assert_same_outputs(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual[2:], expected[2:]):
        assert a == e
    for a, e in zip(actual[:2], expected[:2]):
        if e is None:
            assert a is None
            continue
        assert isinstance(a, list) and len(a) == len(e)
        for x, y in zip(a, e):
            assert_same(x, y)


@pytest.mark.parametrize("patch", [14, 16])
def test_process_vision_info_single_message(media, http_server, patch):
    names = ["vga.jpg", "palette.png", "rgba.png", "gray.png", "anim.gif", "cmyk.jpg", "strip.png", "small.webp"]
    messages = build_messages(media, http_server, names, random.Random(seed_of("single", patch)))
    assert vlutils.extract_vision_info(messages) == ref.extract_vision_info(messages)
    assert len(vlutils.extract_vision_info(messages)) == len(names)
    expected = ref.process_vision_info(fresh(messages), image_patch_size=patch)
    actual = vlutils.process_vision_info(fresh(messages), image_patch_size=patch)
    assert_same_outputs(actual, expected)
    expected = ref.process_vision_info(fresh(messages), return_video_kwargs=True, image_patch_size=patch)
    actual = vlutils.process_vision_info(fresh(messages), return_video_kwargs=True, image_patch_size=patch)
    assert_same_outputs(actual, expected)


def test_process_vision_info_batch(media, http_server):
    rng = random.Random(5)
    batch = [
        build_messages(media, http_server, ["vga.jpg", "gray.png"], rng),
        build_messages(media, http_server, ["rgba.webp"], rng),
        [{"role": "user", "content": "text only"}],
        build_messages(media, http_server, ["tiny.png", "palette.png", "strip.png"], rng),
    ]
    assert len(vlutils.extract_vision_info(batch)) == len(ref.extract_vision_info(batch)) == 6
    for kwargs in ({}, {"return_video_kwargs": True}, {"return_video_kwargs": True, "return_video_metadata": True}):
        expected = ref.process_vision_info([fresh(c) for c in batch], **kwargs)
        actual = vlutils.process_vision_info([fresh(c) for c in batch], **kwargs)
        assert_same_outputs(actual, expected)


def test_process_vision_info_no_images():
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert vlutils.process_vision_info(messages) == ref.process_vision_info(messages) == (None, None)
    assert vlutils.process_vision_info(messages, return_video_kwargs=True) == ref.process_vision_info(
        messages, return_video_kwargs=True
    )


def test_extract_vision_info_matches_reference(media):
    messages = [
        {"role": "system", "content": "sys"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a"},
                {"type": "image", "image": str(media["vga.jpg"])},
                {"type": "image_url", "image_url": {"url": str(media["gray.png"])}},
                {"image": str(media["tiny.png"]), "min_pixels": 100},
                {"type": "video", "video": "x.mp4", "fps": 1.0},
                {"type": "text", "text": "b"},
            ],
        },
    ]
    assert vlutils.extract_vision_info(messages) == ref.extract_vision_info(messages)
    assert vlutils.extract_vision_info([messages, messages]) == ref.extract_vision_info([messages, messages])


# ----------------------------------------------------------------------------- deliberate differences


ORIENT_INVERSE = {  # transform that, undone by EXIF orientation o, gives the upright image back
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def upright_marker(width=160, height=96) -> Image.Image:
    """Gray image with a red block in the top-left corner and a blue one in the top-right."""
    arr = np.full((height, width, 3), 128, np.uint8)
    arr[: height // 3, : width // 3] = (230, 20, 20)
    arr[: height // 3, -width // 3 :] = (20, 20, 230)
    return Image.fromarray(arr)


def with_orientation(path: Path, orientation: int, fmt: str) -> Path:
    raw = upright_marker().transpose(ORIENT_INVERSE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    raw.save(path, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return path


@pytest.mark.parametrize("orientation", range(2, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_applied(tmp_path, http_server, orientation, fmt):
    path = with_orientation(tmp_path / f"o{orientation}.{fmt.lower()}", orientation, fmt)
    transposed = ImageOps.exif_transpose(Image.open(path))
    assert transposed.size == (160, 96)
    expected = ref.fetch_image({"image": transposed})
    # the reference ignores the tag, so this is a real difference
    ignored = np.asarray(ref.fetch_image({"image": str(path)}))
    assert ignored.shape != np.asarray(expected).shape or not np.array_equal(ignored, np.asarray(expected))
    http_name = f"exif-{fmt}-{orientation}.{fmt.lower()}"
    shutil.copy(path, http_server.root / http_name)
    for source in (str(path), path.read_bytes(), http_server.url(http_name), Image.open(path)):
        actual = vlutils.fetch_image({"image": source})
        assert_same(actual, expected)
        arr = np.asarray(actual).astype(int)
        h, w = arr.shape[:2]
        top_left = arr[: h // 4, : w // 4].reshape(-1, 3).mean(0)
        top_right = arr[: h // 4, -w // 4 :].reshape(-1, 3).mean(0)
        assert top_left[0] > 180 and top_left[2] < 80, top_left  # red stays top-left
        assert top_right[2] > 180 and top_right[0] < 80, top_right


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Independent alpha compositing: out = c * a + 255 * (1 - a)."""
    color = rgba[..., :3].astype(np.float64)
    alpha = rgba[..., 3:4].astype(np.float64) / 255.0
    return np.rint(color * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


@pytest.mark.parametrize("name", ["la.png", "ptrans.png", "ptrans.gif"])
@pytest.mark.parametrize("patch", [14, 16])
def test_other_alpha_modes_composited_on_white(media, name, patch):
    path = media[name]
    opened = Image.open(path)
    assert opened.mode in ("LA", "P") and (opened.mode == "LA" or "transparency" in opened.info)
    as_rgba = opened.convert("RGBA")
    expected = ref.fetch_image({"image": as_rgba}, image_patch_size=patch)  # the reference composites RGBA
    assert not np.array_equal(np.asarray(ref.fetch_image({"image": str(path)}, image_patch_size=patch)), np.asarray(expected))
    assert_same(vlutils.fetch_image({"image": str(path)}, image_patch_size=patch), expected)
    assert_same(vlutils.fetch_image({"image": Image.open(path)}, image_patch_size=patch), expected)


@pytest.mark.parametrize("mode", ["LA", "PA", "RGBA", "P+t"])
def test_alpha_compositing_pixels(mode):
    """At a size that needs no resize (56x84), the output is exactly the image composited
    on white (numpy, +-1 for rounding), for every alpha mode."""
    rng = np.random.default_rng(seed_of("alpha", mode))
    color = rng.integers(0, 256, size=(84, 56, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, size=(84, 56), dtype=np.uint8)
    alpha[:10] = 0
    alpha[-10:] = 255
    if mode == "LA":
        gray = color[..., 0]
        image = Image.fromarray(np.dstack([gray, alpha]), "LA")
        rgba = np.dstack([gray, gray, gray, alpha])
    elif mode == "PA":
        palette = Image.fromarray(color).quantize(32)
        idx = np.asarray(palette)
        pal = np.array(palette.getpalette()[: 32 * 3], np.uint8).reshape(-1, 3)
        image = Image.merge("PA", (palette, Image.fromarray(alpha)))
        image.putpalette(palette.getpalette())
        rgba = np.dstack([pal[idx], alpha])
    elif mode == "P+t":
        palette = Image.fromarray(color).quantize(32)
        idx = np.asarray(palette).copy()
        idx[:10] = 31
        image = Image.fromarray(idx, "P")
        image.putpalette(palette.getpalette())
        image.info["transparency"] = 31
        pal = np.array(palette.getpalette()[: 32 * 3], np.uint8).reshape(-1, 3)
        rgba = np.dstack([pal[idx], np.where(idx == 31, 0, 255).astype(np.uint8)])
    else:
        image = Image.fromarray(np.dstack([color, alpha]), "RGBA")
        rgba = np.dstack([color, alpha])
    out = np.asarray(vlutils.fetch_image({"image": image, "min_pixels": 1, "max_pixels": 10**7})).astype(int)
    assert out.shape == (84, 56, 3)
    expected = composite_on_white(rgba).astype(int)
    assert np.abs(out - expected).max() <= 1
    assert (out[:10] == 255).all()  # fully transparent rows are pure white
    if mode != "P+t":
        assert np.array_equal(out[-10:], rgba[-10:, :, :3].astype(int))  # opaque rows keep their colour


# ----------------------------------------------------------------------------- demo fixtures

REPO = Path(__file__).resolve().parents[1]


def test_demo_fixtures_match_reference(monkeypatch):
    """The bundled demo messages load; each image equals the reference's result (the EXIF
    portrait: the reference on the transposed image)."""
    import json

    monkeypatch.chdir(REPO)
    messages = json.loads((REPO / "fixtures" / "demo" / "messages.json").read_text())
    items = [e for e in vlutils.extract_vision_info(messages) if "image" in e or "image_url" in e]
    assert len(items) >= 4
    no_video = [{**m, "content": [e for e in m["content"] if "video" not in e]} if isinstance(m["content"], list) else m
                for m in messages]
    images, _ = vlutils.process_vision_info(no_video)
    for item, actual in zip(items, images):
        source = item.get("image") or item["image_url"]
        path = source["url"] if isinstance(source, dict) else source
        assert (REPO / path).stat().st_size < 100_000
        original = ImageOps.exif_transpose(Image.open(REPO / path))
        options = {k: v for k, v in item.items() if k not in ("type", "image", "image_url")}
        assert_same(actual, ref.fetch_image({"image": original, **options}))


# ----------------------------------------------------------------------------- property-based

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

FORMATS_BY_MODE = {
    "RGB": ["PNG", "JPEG", "WEBP", "GIF"],
    "L": ["PNG", "JPEG", "WEBP", "GIF"],
    "CMYK": ["JPEG"],
    "RGBA": ["PNG", "WEBP"],
    "P": ["PNG", "GIF"],
    "I;16": ["PNG"],
}


@st.composite
def image_cases(draw):
    mode = draw(st.sampled_from(sorted(FORMATS_BY_MODE)))
    fmt = draw(st.sampled_from(FORMATS_BY_MODE[mode]))
    ratio_side = draw(st.integers(1, 199))
    width = draw(st.integers(1, 700))
    height = draw(st.one_of(st.integers(1, 700), st.just(max(1, min(4000, width * ratio_side))),
                            st.just(max(1, width // ratio_side))))
    patch = draw(st.sampled_from([14, 16]))
    kind = draw(st.sampled_from(["default", "pixels", "resized"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return mode, fmt, width, height, patch, kind, seed


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=image_cases())
def test_random_images_match_reference(tmp_path, case):
    """Random sizes (ratios up to ~199), modes, formats, options and patch sizes."""
    mode, fmt, width, height, patch, kind, seed = case
    spec = Spec(f"h{seed}.{fmt.lower()}", width, height, mode, fmt)
    path = tmp_path / f"{seed}-{width}x{height}-{mode.replace(';', '')}.{fmt.lower()}"
    save(make_image(spec), path, fmt)
    options = random_options(random.Random(seed), patch, kind)
    ele = {"image": str(path), **options}
    check_against(ele, reference_fetch(ele, patch), patch)
