"""``processor_inputs``: what vlutils fetched, as the keyword arguments that make transformers'
Qwen2-VL / Qwen2.5-VL / Qwen3-VL processors reproduce it exactly::

    images, videos, video_kwargs = vlutils.process_vision_info(messages, return_video_kwargs=True,
                                                               return_video_metadata=True)
    inputs = processor(text=texts, **vlutils.processor_inputs(images, videos, video_kwargs),
                       return_tensors="pt")

Why not ``**video_kwargs`` as the model cards say: transformers 5.x validates kwargs strictly
and rejects the ``fps`` list; one fps number gives Qwen2.5-VL a wrong ``second_per_grid_ts``
(5.x derives it from the video metadata); and its processors resize the already-resized media
again with their own pixel bounds. So this returns:

* ``do_resize=False`` (images and videos are already on the patch grid) and
  ``do_sample_frames=False`` (the frames are already sampled);
* ``video_metadata``: one plain dict per video (``fps``, ``frames_indices``,
  ``total_num_frames``) whose ``len(frames_indices) / total_num_frames * fps`` is the sample
  fps (5.x's Qwen2.5-VL seconds) and whose ``frames_indices / fps`` are the frame times
  (Qwen3-VL's ``<t seconds>``). Videos without metadata get frames ``0..n-1`` at the sample fps
  of ``video_kwargs`` (without it: 2.0 fps for seconds, 24 fps for timestamps, the defaults
  ``build_inputs`` and transformers use);
* on transformers 4.x, also ``fps`` (its Qwen2.5-VL reads seconds from that list).

Videos are passed as uint8 (their values are whole numbers in [0, 255], so this is exact and
4x smaller).
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

from .errors import InvalidOptionError

__all__ = ["processor_inputs", "transformers_major"]

_METADATA_KEYS = ("fps", "frames_indices", "total_num_frames", "video_backend")
_TIMESTAMP_FPS = 24.0  # transformers' Qwen3-VL default when a video has no fps
_SAMPLE_FPS = 2.0  # qwen-vl-utils' default sample rate, and transformers 4.x's Qwen2.5-VL default


def transformers_major() -> int | None:
    """Major version of the transformers that is imported (else installed), None if absent."""
    module = sys.modules.get("transformers")
    version = getattr(module, "__version__", None)
    if version is None:
        from importlib import metadata

        try:
            version = metadata.version("transformers")
        except metadata.PackageNotFoundError:
            return None
    return int(version.split(".")[0])


def processor_inputs(
    images: Sequence[Any] | None,
    videos: Sequence[Any] | None,
    video_kwargs: dict | None = None,
    *,
    transformers_version: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``processor(text=..., **processor_inputs(images, videos, video_kwargs))``.

    ``images``, ``videos`` and ``video_kwargs`` are what ``process_vision_info`` returns (videos
    as tensors or ``(tensor, metadata)`` pairs). ``transformers_version``: the major version to
    target (default: the installed one)."""
    major = transformers_version if transformers_version is not None else (transformers_major() or 5)
    out: dict[str, Any] = {}
    if images:
        out["images"] = list(images)
    if videos:
        frames, metadata, fps = _videos(videos, video_kwargs)
        out.update(videos=frames, video_metadata=metadata, do_sample_frames=False)
        if major < 5:
            out["fps"] = fps
    if out:
        out["do_resize"] = False
    return out


def _videos(videos: Sequence[Any], video_kwargs: dict | None) -> tuple[list, list[dict], list[float]]:
    import torch

    given = (video_kwargs or {}).get("fps")
    if isinstance(given, (int, float)) and not isinstance(given, bool):
        given = [given] * len(videos)
    if given is not None and len(given) != len(videos):
        raise InvalidOptionError(f"video_kwargs['fps'] has {len(given)} value(s) for {len(videos)} video(s)")
    frames, metadata, sample_fps = [], [], []
    for i, video in enumerate(videos):
        meta = None
        if isinstance(video, tuple) and len(video) == 2 and (video[1] is None or isinstance(video[1], dict)):
            video, meta = video
        if not isinstance(video, torch.Tensor) or video.ndim != 4:
            raise InvalidOptionError(f"video {i} must be a (T, C, H, W) tensor, got {type(video).__name__}")
        count = int(video.shape[0])
        fps = None if given is None else float(given[i])
        if meta:
            md = {k: (list(meta[k]) if k == "frames_indices" else meta[k]) for k in _METADATA_KEYS if k in meta}
        elif fps is not None:
            md = {"fps": fps, "frames_indices": list(range(count)), "total_num_frames": count}
        else:  # frames 0..n-1 at 24 fps (timestamps) sampled at 2 fps (seconds): the two defaults
            md = {"fps": _TIMESTAMP_FPS, "frames_indices": list(range(count)),
                  "total_num_frames": int(count * _TIMESTAMP_FPS / _SAMPLE_FPS)}
        if fps is None:
            fps = len(md["frames_indices"]) / md["total_num_frames"] * md["fps"]
        frames.append(video if video.dtype == torch.uint8 else video.to(torch.uint8))
        metadata.append(md)
        sample_fps.append(fps)
    return frames, metadata, sample_fps
