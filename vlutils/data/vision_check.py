"""Vision settings of a spec checked when it is loaded, against the model's defaults.

A setting that cannot work (a video ``max_pixels`` below the model's default ``min_pixels``,
``min_frames`` above ``max_frames``) would otherwise reject every record at run time, hours
later; here it fails at once, naming the source and the keys.
"""

from __future__ import annotations

import math
from typing import Any

from ..constants import IMAGE_MAX_TOKEN_NUM, IMAGE_MIN_TOKEN_NUM, VIDEO_MIN_TOKEN_NUM
from ..errors import InvalidSpecError
from .spec import DatasetSpec

_INTEGER_KEYS = ("nframes", "min_frames", "max_frames", "resized_height", "resized_width")


def _number(where: str, key: str, value: Any, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidSpecError(f"{where}.{key} must be a finite number, got {value!r}")
    if key in _INTEGER_KEYS and not float(value).is_integer():
        raise InvalidSpecError(f"{where}.{key} must be an integer, got {value!r}")
    if positive and value <= 0:
        raise InvalidSpecError(f"{where}.{key} must be > 0, got {value!r}")
    if not positive and value < 0:
        raise InvalidSpecError(f"{where}.{key} must be >= 0, got {value!r}")
    return float(value)


def check_vision_settings(spec: DatasetSpec) -> None:
    """Raise :class:`InvalidSpecError` for a source whose image/video defaults cannot be met."""
    from ..families import get_family  # no torch: the driver stays light

    preset = get_family(spec.model_type, "prepare").vision
    patch = spec.options.get("patch_size", preset.patch_size)
    merge = spec.options.get("merge_size", preset.merge_size)
    for key, value in (("patch_size", patch), ("merge_size", merge)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidSpecError(f"{spec.path or 'spec'}: options.{key} must be a positive integer, got {value!r}")
    factor = patch * merge
    for i, source in enumerate(spec.sources):
        where = f"{spec.path or 'spec'}: sources[{i}] ({source.name})"
        image = {k: _number(f"{where}.image", k, v) for k, v in source.image.items()}
        _check_pixels(f"{where}.image", image, IMAGE_MIN_TOKEN_NUM * factor**2, IMAGE_MAX_TOKEN_NUM * factor**2)
        _check_resized(f"{where}.image", image)
        video = {k: _number(f"{where}.video", k, v, positive=k not in ("video_start", "video_end"))
                 for k, v in source.video.items()}
        _check_pixels(f"{where}.video", video, VIDEO_MIN_TOKEN_NUM * factor**2, None)
        _check_resized(f"{where}.video", video)
        if "min_frames" in video and "max_frames" in video and video["min_frames"] > video["max_frames"]:
            raise InvalidSpecError(f"{where}.video: min_frames ({video['min_frames']:g}) is above "
                                   f"max_frames ({video['max_frames']:g})")
        if "fps" in video and "nframes" in video:
            raise InvalidSpecError(f"{where}.video: set fps or nframes, not both")
        if "video_start" in video and "video_end" in video and video["video_start"] >= video["video_end"]:
            raise InvalidSpecError(f"{where}.video: video_start ({video['video_start']:g}) must be before "
                                   f"video_end ({video['video_end']:g})")


def _check_pixels(where: str, settings: dict, default_min: float, default_max: float | None) -> None:
    low = settings.get("min_pixels", default_min)
    high = settings.get("max_pixels", default_max)
    if high is not None and high < low:
        floor = f"min_pixels ({low:g})" if "min_pixels" in settings else f"the model's default min_pixels ({low:g})"
        raise InvalidSpecError(f"{where}: max_pixels ({high:g}) is below {floor}; every item would be refused: "
                               f"raise max_pixels or set a lower min_pixels")


def _check_resized(where: str, settings: dict) -> None:
    if ("resized_height" in settings) != ("resized_width" in settings):
        raise InvalidSpecError(f"{where}: set resized_height and resized_width together")
