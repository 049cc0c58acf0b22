"""Patchify resized images and video frames into the pixel tensors Qwen2-VL-family models eat.

The output is bit-identical to transformers' slow (PIL/numpy) ``Qwen2VLImageProcessor`` path
for media that is already sized to a multiple of ``patch_size * merge_size`` (which is what
``process_vision_info`` returns):

* rescale: ``float32(float64(x) * (1/255))``; normalize: ``(x - mean) / std`` in float32
  (through a per-channel table of the 256 byte values, so no float64 copy of the pixels);
* frames are grouped by ``temporal_patch_size`` (2); a still image is repeated to 2 frames
  and an odd frame count is padded with the last frame;
* ``pixel_values`` rows are ``(grid_t * grid_h * grid_w, C * temporal_patch * patch * patch)``,
  ordered merge-block by merge-block (the order the vision tower's PatchMerger expects).

Work is done one image / video at a time, written into one preallocated output, so peak
memory is the output plus a byte-sized copy of the largest single item.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import numpy as np
import torch

from .errors import InvalidOptionError, VisionInputError
from .families import FAMILIES, VisionPreset, get_family
from .pool import run_parallel

__all__ = ["VisionPreset", "PRESETS", "get_preset", "patchify", "patchify_image", "patchify_video"]

# Every patchifying family's preset, keyed by model_type (from vlutils.families; Qwen-VL's fixed
# 448x448 images are not patchified: vlutils.image_qwen_vl).
PRESETS: dict[str, VisionPreset] = {
    name: f.vision for name, f in FAMILIES.items() if "inputs" in f.uses and f.pipeline == "patches"
}


def get_preset(model_type: str | VisionPreset = "qwen2_vl", **overrides: Any) -> VisionPreset:
    """The preset for ``model_type`` (or a given preset) with any field overridden."""
    if isinstance(model_type, VisionPreset):
        preset = model_type
    else:
        family = get_family(model_type, "inputs")
        if family.pipeline != "patches":
            raise InvalidOptionError(f"model_type {model_type!r} ({family.title}) does not patchify its images: "
                                     "build_inputs / vlutils.image_qwen_vl make its pixel_values")
        preset = family.vision
    fields = {f.name for f in dataclasses.fields(VisionPreset)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise InvalidOptionError(f"unknown preset option(s) {unknown}; known: {sorted(fields)}")
    preset = dataclasses.replace(preset, **{k: v for k, v in overrides.items() if v is not None})
    for name in ("patch_size", "temporal_patch_size", "merge_size"):
        value = getattr(preset, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidOptionError(f"{name} must be a positive int, got {value!r}")
    for name in ("image_mean", "image_std"):
        value = tuple(float(v) for v in getattr(preset, name))
        if len(value) != 3 or (name == "image_std" and 0.0 in value):
            raise InvalidOptionError(f"{name} must be 3 numbers (std non-zero), got {getattr(preset, name)!r}")
        preset = dataclasses.replace(preset, **{name: value})
    return preset


def patchify_image(image: Any, preset: VisionPreset | str = "qwen2_vl") -> tuple[torch.Tensor, torch.Tensor]:
    """One image (PIL, HWC/CHW uint8 array or tensor) -> ``(pixel_values, grid_thw)``."""
    preset = get_preset(preset)
    frames = _frames_from_image(image)
    return _patchify_frames(frames, preset, image)


def patchify_video(frames: Any, preset: VisionPreset | str = "qwen2_vl") -> tuple[torch.Tensor, torch.Tensor]:
    """One video -> ``(pixel_values, grid_thw)``. ``frames``: a (T, C, H, W) tensor as
    qwen-vl-utils returns (float 0..255 or uint8), a (T, H, W, C) array, or a list of images."""
    preset = get_preset(preset)
    return _patchify_frames(_frames_from_video(frames), preset, frames)


def patchify(
    images: Sequence[Any] | None = None,
    videos: Sequence[Any] | None = None,
    model_type: str | VisionPreset = "qwen2_vl",
    **overrides: Any,
) -> dict[str, torch.Tensor | None]:
    """All images and videos of a batch -> the model's vision inputs.

    Returns ``pixel_values`` / ``image_grid_thw`` and ``pixel_values_videos`` /
    ``video_grid_thw`` (``None`` when there are no images / videos), in input order.
    """
    preset = get_preset(model_type, **overrides)
    out: dict[str, torch.Tensor | None] = {}
    for kind, key, grid_key, items, split in (
        ("image", "pixel_values", "image_grid_thw", images, _frames_from_image),
        ("video", "pixel_values_videos", "video_grid_thw", videos, _frames_from_video),
    ):
        items = list(items or [])
        if not items:
            out[key], out[grid_key] = None, None
            continue
        frames, grids = [], []
        for i, item in enumerate(items):
            try:
                frames.append(split(item))
                grids.append(_grid(frames[-1], preset, item))
            except VisionInputError as exc:
                raise exc.with_position(f"{kind} {i}")
        out[key], out[grid_key] = _patchify_many(frames, grids, preset)
    return out


# --- implementation ------------------------------------------------------------------


def _patchify_many(
    frame_stacks: list[torch.Tensor], grids: list[torch.Tensor], preset: VisionPreset
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patchify every stack into one preallocated (rows, dim) float32 tensor.

    Items go to a small thread pool: numpy releases the GIL in its copies and arithmetic, and
    each item writes its own slice of the output, so the work spreads over the cores.
    """
    grids = torch.stack(grids)
    rows = grids.prod(1)
    dim = 3 * preset.temporal_patch_size * preset.patch_size**2
    pixel_values = torch.empty(int(rows.sum()), dim, dtype=torch.float32)
    ends = torch.cumsum(rows, 0).tolist()
    slices = [pixel_values[end - n : end] for end, n in zip(ends, rows.tolist())]
    run_parallel(lambda job: _write_patches(job[0], preset, job[1]), list(zip(frame_stacks, slices)))
    return pixel_values, grids


def _patchify_frames(frames: torch.Tensor, preset: VisionPreset, source: Any) -> tuple[torch.Tensor, torch.Tensor]:
    pixel_values, grids = _patchify_many([frames], [_grid(frames, preset, source)], preset)
    return pixel_values, grids[0]


def _grid(frames: torch.Tensor, preset: VisionPreset, source: Any) -> torch.Tensor:
    """(grid_t, grid_h, grid_w) in patches; sides must already be multiples of the factor."""
    n, _, height, width = frames.shape
    if n == 0:
        raise InvalidOptionError("a video needs at least one frame", source)
    if height % preset.factor or width % preset.factor:
        raise InvalidOptionError(
            f"size {height}x{width} is not a multiple of {preset.factor} (patch_size * merge_size); "
            "resize with smart_resize / process_vision_info first",
            source,
        )
    grid_t = -(-n // preset.temporal_patch_size)
    return torch.tensor([grid_t, height // preset.patch_size, width // preset.patch_size])


def _write_patches(frames: torch.Tensor, preset: VisionPreset, out: torch.Tensor) -> None:
    """Reorder one (T, 3, H, W) stack of 0..255 values into patches and normalize into ``out``.

    The reorder is done first, on the raw values (1 byte each for uint8). Bytes are then
    rescaled in float32 in a form proven (over all 256 values) to round exactly like
    transformers' ``float32(float64(x) * rescale)``, and normalized with ``(x - mean) / std``
    in float32 as transformers does. numpy is used because its strided copies and in-place
    arithmetic are several times faster than torch's on CPU here.
    """
    tp, p, m = preset.temporal_patch_size, preset.patch_size, preset.merge_size
    n, channels, height, width = frames.shape
    values = frames.numpy()
    pad = (-n) % tp
    if pad:  # an odd frame count (or a still image) repeats its last frame
        values = np.concatenate([values, np.repeat(values[-1:], pad, axis=0)])
    grid_t, grid_h, grid_w = values.shape[0] // tp, height // p, width // p
    values = values.reshape(grid_t, tp, channels, grid_h // m, m, p, grid_w // m, m, p)
    # -> (t, h-block, w-block, h-in-block, w-in-block) rows of (channel, frame, y, x) values.
    patches = np.ascontiguousarray(values.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)).reshape(-1, channels, tp * p * p)
    target = out.numpy().reshape(-1, channels, tp * p * p)
    if patches.dtype != np.uint8:
        as_bytes = patches.astype(np.uint8)
        if np.array_equal(as_bytes, patches):  # float frames holding whole numbers, as qwen-vl-utils returns
            patches = as_bytes
    mean = np.asarray(preset.image_mean, dtype=np.float32).reshape(1, channels, 1)
    std = np.asarray(preset.image_std, dtype=np.float32).reshape(1, channels, 1)
    plan = _byte_rescale(preset.rescale_factor) if patches.dtype == np.uint8 else None
    if plan is not None:
        operation, constant = plan
        operation(patches, constant, out=target)  # bytes -> float32, one exact-as-reference rounding
    else:  # fractional values (or an unusual rescale factor): float64 then float32, as transformers
        target[...] = (patches.astype(np.float64) * preset.rescale_factor).astype(np.float32)
    np.subtract(target, mean, out=target)
    np.divide(target, std, out=target)


@functools.lru_cache(maxsize=16)
def _byte_rescale(rescale: float):
    """A float32-only way to compute ``float32(float64(v) * rescale)`` for every byte ``v``, or None.

    Checked exhaustively on the 256 possible values: for 1/255, ``float32(v) / 255`` is exact.
    """
    values = np.arange(256)
    reference = (values.astype(np.float64) * rescale).astype(np.float32)
    as_float32 = values.astype(np.float32)
    for operation, constant in ((np.divide, np.float32(1 / rescale)), (np.multiply, np.float32(rescale))):
        if np.array_equal(operation(as_float32, constant), reference):
            return operation, constant
    return None


def _frames_from_image(image: Any) -> torch.Tensor:
    """An image as a (1, 3, H, W) tensor of 0..255 values."""
    if _is_pil(image):
        if image.mode != "RGB":
            image = image.convert("RGB")  # as the processor's do_convert_rgb
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).unsqueeze(0)
    array = _as_tensor(image, "image")
    if array.dim() != 3:
        raise InvalidOptionError(f"an image array must be HWC or CHW, got shape {tuple(array.shape)}", image)
    return _channels_first(array, image).unsqueeze(0)


def _frames_from_video(video: Any) -> torch.Tensor:
    """A video as a (T, 3, H, W) tensor of 0..255 values."""
    if isinstance(video, (list, tuple)):
        if not video:
            raise InvalidOptionError("a video needs at least one frame", video)
        frames = [_frames_from_image(frame) for frame in video]
        if len({tuple(f.shape) for f in frames}) != 1:
            raise InvalidOptionError("all frames of a video must have the same size", video)
        return torch.cat(frames)
    array = _as_tensor(video, "video")
    if array.dim() != 4:
        raise InvalidOptionError(f"a video must be (T, C, H, W) or (T, H, W, C), got shape {tuple(array.shape)}", video)
    if array.shape[1] == 3:
        return array
    if array.shape[-1] == 3:
        return array.permute(0, 3, 1, 2)
    raise InvalidOptionError(f"a video needs 3 channels (RGB), got shape {tuple(array.shape)}", video)


def _channels_first(array: torch.Tensor, source: Any) -> torch.Tensor:
    """HWC or CHW -> CHW, deciding like transformers (a leading 3 means channels first)."""
    if array.shape[0] == 3:
        return array
    if array.shape[-1] == 3:
        return array.permute(2, 0, 1)
    raise InvalidOptionError(f"an image needs 3 channels (RGB), got shape {tuple(array.shape)}", source)


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
    elif isinstance(value, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(value))
    else:
        raise InvalidOptionError(f"cannot patchify a {type(value).__name__} as a {what}: expected PIL, numpy or torch", value)
    if tensor.dtype == torch.uint8:
        return tensor
    if not tensor.dtype.is_floating_point:
        raise InvalidOptionError(f"{what} pixels must be uint8 or float 0..255, got dtype {tensor.dtype}", value)
    if tensor.numel() and not (0.0 <= float(tensor.min()) and float(tensor.max()) <= 255.0):
        raise InvalidOptionError(f"{what} pixel values must lie in 0..255, got {float(tensor.min())}..{float(tensor.max())}", value)
    return tensor


def _is_pil(value: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return False
    return isinstance(value, Image.Image)

