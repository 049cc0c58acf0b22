"""Qwen-VL's image transform, equal to the original's torchvision one without torchvision.

The original (``visual.py``) opens the image, ``convert("RGB")`` and applies::

    transforms.Compose([
        transforms.Resize((S, S), interpolation=InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(mean=CLIP_MEAN, std=CLIP_STD),
    ])

On a PIL image torchvision's ``Resize`` calls PIL's own ``Image.resize((S, S), BICUBIC)``
(antialias does not apply to PIL inputs), ``ToTensor`` divides the uint8 HWC array by 255 into
float32 CHW, and ``Normalize`` subtracts and divides per channel in float32. This module does
the same three steps with PIL and torch, so the tensors are bit-identical.

Like the original (and unlike vlutils' Qwen2-VL path) the image is not turned by its EXIF
orientation and an alpha channel is dropped by ``convert("RGB")``, not composited on white.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .errors import InvalidOptionError

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "DEFAULT_IMAGE_SIZE", "QwenVLPreset", "qwen_vl_transform", "resize", "normalize",
    "load_qwen_vl_image", "pixel_values",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_IMAGE_SIZE = 448  # Qwen-VL's visual.image_size


@dataclass(frozen=True)
class QwenVLPreset:
    """Qwen-VL's vision settings where other families have a ``VisionPreset`` (datasets store it)."""

    image_size: int = DEFAULT_IMAGE_SIZE
    model_type: str = "qwen_vl"

    def pixel_values(self, resized: Sequence[Any]) -> torch.Tensor | None:
        """``(N, 3, S, S)`` from already resized S x S RGB images (None for none)."""
        return torch.stack([normalize(image) for image in resized]) if len(resized) else None


def check_image_size(image_size: Any) -> int:
    """``image_size`` as a positive int (the checkpoint's ``visual.image_size``)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise InvalidOptionError(f"image_size must be a positive int, got {image_size!r}")
    return image_size


def qwen_vl_transform(image: Image.Image, image_size: int = DEFAULT_IMAGE_SIZE) -> torch.Tensor:
    """A PIL image -> float32 tensor (3, S, S): RGB conversion, bicubic resize, CLIP normalisation."""
    size = check_image_size(image_size)
    if not isinstance(image, Image.Image):
        raise InvalidOptionError(f"qwen_vl_transform takes a PIL image, got {type(image).__name__}")
    return normalize(resize(image, size))


def resize(image: Image.Image, image_size: int = DEFAULT_IMAGE_SIZE) -> Image.Image:
    """``convert("RGB")`` then PIL's bicubic resize to S x S (what torchvision's Resize does to a PIL image)."""
    size = check_image_size(image_size)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return rgb.resize((size, size), Image.BICUBIC)


def normalize(image: Image.Image | np.ndarray) -> torch.Tensor:
    """An RGB image (PIL, or an HxWx3 uint8 array) -> float32 (3, H, W): ToTensor's ``/ 255``,
    then Normalize's per-channel ``(x - mean) / std``, in torchvision's order and dtype."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise InvalidOptionError(f"normalize takes an RGB image (H, W, 3), got shape {array.shape}")
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=torch.float32)[:, None, None]
    return tensor.sub_(mean).div_(std)


def load_qwen_vl_image(item: dict) -> Image.Image:
    """The image of a content item through vlutils' sources (paths, URLs, base64, PIL, arrays;
    the safe-mode policy and size limits apply), decoded as the original opens it: no EXIF turn."""
    from .image import image_source, open_image

    return open_image(image_source(item), exif_orientation=False)


def pixel_values(items: Sequence[dict], image_size: int = DEFAULT_IMAGE_SIZE) -> torch.Tensor | None:
    """``(images, 3, S, S)`` float32 for the image items in order (None when there are none)."""
    size = check_image_size(image_size)
    tensors = [qwen_vl_transform(load_qwen_vl_image(item), size) for item in items]
    return torch.stack(tensors) if tensors else None
