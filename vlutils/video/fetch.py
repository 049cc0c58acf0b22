"""``fetch_video``: one video item -> float32 (or uint8) ``(T, 3, H, W)`` tensor, exactly as
qwen-vl-utils 0.0.14 with its decord backend, without its memory use or hangs."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from .. import cancel
from .. import policy as _policy
from ..errors import describe_source, InvalidMessageError, InvalidOptionError, SizeLimitError, UnsupportedSourceError
from ..messages import item_source
from ..resize import check_number
from ..sources import FetchSettings, local_file
from .backends import get_video_reader_backend, resolve_backend
from .backends.base import Probe
from .frames import load_frame_list
from .metadata import VideoMetadata
from .pipeline import Plan, decode_video
from ..image import MAX_IMAGE_PIXELS
from .resize import check_output_size, max_video_bytes, resize_exact, video_target_size
from .sampling import calculate_video_frame_range, sample_indices, smart_nframes

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300.0
TIMEOUT_ENV = "VLUTILS_VIDEO_TIMEOUT"
OUTPUT_DTYPES = (torch.float32, torch.uint8, torch.float16, torch.bfloat16)
_NUMERIC_OPTIONS = ("fps", "nframes", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels",
                    "resized_height", "resized_width")


def video_timeout(timeout: float | None = None) -> float:
    """Decode time limit in seconds: the argument, else ``VLUTILS_VIDEO_TIMEOUT``, else 300."""
    if timeout is None:
        raw = os.environ.get(TIMEOUT_ENV)
        if raw is None or not raw.strip():
            return DEFAULT_TIMEOUT
        try:
            timeout = float(raw)
        except ValueError:
            raise InvalidOptionError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    return float(check_number("video timeout", timeout))


def video_source(ele: dict[str, Any]) -> Any:
    """The video value of an item: ``video``, or ``video_url`` as a string or ``{"url": ...}``."""
    if not isinstance(ele, dict):
        raise InvalidMessageError(f"content item must be a dict, got {type(ele).__name__}", ele)
    value = item_source(ele, "video")
    if value is None:
        raise InvalidMessageError("video is None", value)
    return value


def fetch_video(
    ele: dict[str, Any],
    image_patch_size: int = 14,
    return_video_sample_fps: bool = False,
    return_video_metadata: bool = False,
    *,
    backend: str | None = None,
    timeout: float | None = None,
    output_dtype: torch.dtype = torch.float32,
    fast_resize: bool = False,
    fetch_settings: FetchSettings | None = None,
    frames_patch_grid: bool = False,
) -> Any:
    """Load, sample and resize one video item; same arguments and return values as
    ``qwen_vl_utils.fetch_video`` (``video``, ``(video, metadata)``, and ``..., sample_fps``).

    Extra keyword options: ``backend`` (else ``FORCE_QWENVL_VIDEO_READER``, else ``pyav``),
    ``timeout`` seconds for decoding (else ``VLUTILS_VIDEO_TIMEOUT``, else 300),
    ``output_dtype`` (``torch.uint8`` holds the same values in 4x less memory) and
    ``fast_resize`` (scale inside FFmpeg with the pyav backend: much faster, not
    pixel-identical to the reference). ``frames_patch_grid``: resize each frame of a frame
    list on the patch-size grid first (upstream qwen-vl-utils' later fix, commit fe12058)
    instead of 0.0.14's doubled factor. A frame list may carry ``"timestamps"`` (seconds, one
    per frame): they set the sample fps and the metadata (see :mod:`vlutils.video.frames`).
    """
    value = video_source(ele)
    check_number("image_patch_size", image_patch_size, integer=True)
    if output_dtype not in OUTPUT_DTYPES:
        raise InvalidOptionError(f"output_dtype must be one of {OUTPUT_DTYPES}, got {output_dtype!r}")
    if "video" not in ele:
        ele = {**ele, "video": value}
    for key in _NUMERIC_OPTIONS:
        if key in ele:
            check_number(key, ele[key], source=_label(value))
    if "fps" in ele and "nframes" in ele:
        raise InvalidOptionError("give either `fps` or `nframes`, not both", _label(value))
    from .. import cache as _cache

    cache = _cache.current()
    key = None
    if cache is not None:
        key = _cache_key(ele, value, image_patch_size, backend, output_dtype, fast_resize, fetch_settings,
                         frames_patch_grid)
    args = (ele, value, image_patch_size, backend, timeout, output_dtype, fast_resize, fetch_settings,
            frames_patch_grid)
    if key is None:
        video, metadata, sample_fps = _fetch_any(*args)
    else:
        video, metadata, sample_fps = cache.get_or_compute(
            key, lambda: _fetch_any(*args), size=lambda r: r[0].numel() * r[0].element_size(), copy=_copy_result,
        )
    result = (video, metadata) if return_video_metadata else video
    if return_video_sample_fps:
        return result, sample_fps
    return result


def _copy_result(result: tuple) -> tuple:
    video, metadata, sample_fps = result
    copied = VideoMetadata({k: list(v) if isinstance(v, list) else v for k, v in metadata.items()})
    copied.info = dict(metadata.info)
    return video.clone(), copied, sample_fps


_SOURCE_FIELDS = ("type", "video", "video_url", "url", "path", "base64")


def _cache_key(ele, value, image_patch_size, backend, output_dtype, fast_resize, fetch_settings, patch_grid):
    """The media-cache key of a video item (None: not cacheable). Runs the safe-mode source checks."""
    from .. import cache as _cache

    identity = _cache.source_identity(value)
    if identity is None:
        return None
    is_list = isinstance(value, (list, tuple))
    backend_name = None if is_list else (backend if backend is not None else get_video_reader_backend())
    return ("video", identity, _cache.options_key(ele, _SOURCE_FIELDS), image_patch_size, backend_name,
            str(output_dtype), bool(fast_resize) and not is_list, bool(patch_grid) and is_list, _policy.current(),
            fetch_settings or FetchSettings.from_env(), max_video_bytes())


def _fetch_any(ele, value, image_patch_size, backend, timeout, output_dtype, fast_resize, fetch_settings,
               frames_patch_grid):
    """(video, metadata, sample_fps) of a file, URL, bytes or frame list, uncached."""
    # read the policy here: the decode thread and frame pool do not inherit contextvars
    max_frames = _policy.limit("max_frames", None)
    if isinstance(value, (list, tuple)):
        if max_frames is not None and len(value) > max_frames:
            raise SizeLimitError(f"{len(value)} frames, over the {int(max_frames)}-frame limit", _label(value))
        video, metadata, sample_fps = _fetch_frame_list(
            ele, value, image_patch_size, output_dtype, bool(frames_patch_grid)
        )
    elif isinstance(value, (str, bytes, bytearray, memoryview, os.PathLike)):
        if ele.get("timestamps") is not None:
            raise InvalidOptionError("timestamps apply to frame lists only (a file has its own)", _label(value))
        video, metadata, sample_fps = _fetch_file(
            ele, value, image_patch_size, backend, _policy.limit("decode_timeout", video_timeout(timeout)),
            output_dtype, bool(fast_resize), fetch_settings, max_frames,
        )
    else:
        raise UnsupportedSourceError(
            f"unsupported video type {type(value).__name__}; expected a path, URL, data URI, bytes or a list of frames",
            value,
        )
    return video, metadata, sample_fps


def _label(value: Any) -> Any:
    return value if isinstance(value, str) else None


def read_video(
    ele: dict[str, Any], backend: str | None = None, timeout: float | None = None
) -> tuple[torch.Tensor, VideoMetadata, float]:
    """The reference's per-backend reader contract, ``VIDEO_READER_BACKENDS[name](ele)``:
    ``(uint8 TCHW frames at source size, metadata, sample_fps)`` - no resize."""
    value = video_source(ele)
    if "video" not in ele:
        ele = {**ele, "video": value}
    return _fetch_file(ele, value, 14, backend, _policy.limit("decode_timeout", video_timeout(timeout)),
                       torch.uint8, False, None, _policy.limit("max_frames", None), resize=False)


def _fetch_file(ele, value, image_patch_size, backend_name, timeout, output_dtype, fast_resize, settings,
                max_frames=None, resize=True):
    started = time.monotonic()
    backend = resolve_backend(backend_name if backend_name is not None else get_video_reader_backend())
    backend = cancel.wrap_backend(backend, cancel.current())  # async callers: stop between frames on cancel

    def plan(probe: Probe) -> Plan:
        start, end, count = calculate_video_frame_range(ele, probe.total_frames, probe.fps)
        nframes = smart_nframes(ele, total_frames=count, video_fps=probe.fps)
        if max_frames is not None and nframes > max_frames:
            raise SizeLimitError(f"{nframes} frames requested, over the {int(max_frames)}-frame limit", _label(value))
        indices, vfr = sample_indices(start, end, nframes, probe.timestamps)
        return Plan(indices=indices, count=count, fps=probe.fps, vfr=vfr)

    nframes_box: list[int] = []
    frame_limit = int(_policy.limit("max_pixels", MAX_IMAGE_PIXELS))  # read here: decode runs in another thread
    total_limit = max_video_bytes()

    def size(height: int, width: int) -> tuple[int, int]:
        # the decoded frame size, like an image's: a small file can hold 8192x8192 frames
        if height * width > frame_limit:
            raise SizeLimitError(
                f"video frames are {width}x{height} = {width * height} pixels, over the {frame_limit}-pixel limit",
                _label(value),
            )
        if not resize:
            return height, width
        target = video_target_size(ele, nframes_box[0], height, width, image_patch_size)
        check_output_size(nframes_box[0], *target, source=_label(value), frame_limit=frame_limit,
                          total_limit=total_limit)
        return target

    def plan_and_remember(probe: Probe) -> Plan:
        result = plan(probe)
        nframes_box.append(len(result.indices))
        return result

    suffix = source_suffix(value)
    with local_file(value, settings, suffix=suffix) as path:
        refuse_playlist(path, value)
        result = decode_video(
            backend, path, value, plan_and_remember, size,
            timeout=timeout, out_dtype=output_dtype, fast_resize=fast_resize and backend.supports_fast_resize,
        )
    plan_ = result.plan
    nframes = len(plan_.indices)
    sample_fps = nframes / max(plan_.count, 1e-6) * plan_.fps
    metadata = VideoMetadata(
        fps=plan_.fps, frames_indices=list(plan_.indices), total_num_frames=plan_.count, video_backend=backend.name
    )
    metadata.info.update(
        sample_fps=sample_fps,
        nframes=nframes,
        resized_height=int(result.video.shape[-2]),
        resized_width=int(result.video.shape[-1]),
        source_height=result.source_size[0],
        source_width=result.source_size[1],
        total_frames_in_file=result.probe.total_frames,
        decoder=getattr(backend, "decoder", backend.name),
        codec=result.probe.codec,
        rotation=getattr(result.reader, "rotation", None),
        variable_frame_rate=plan_.vfr,
        fast_resize=fast_resize and backend.supports_fast_resize,
        seeks=getattr(result.reader, "seeks", None),
        frames_decoded=getattr(result.reader, "decoded", None),
        decode_workers=getattr(result.reader, "workers", None),
        frame_index=result.probe.extra.get("index"),
        seconds=time.monotonic() - started,
    )
    logger.info("video %s: %d frames @ %.3g fps -> %s via %s in %.2fs", _short_label(value), nframes, sample_fps,
                tuple(result.video.shape), backend.name, metadata.info["seconds"])
    return result.video, metadata, sample_fps


def _fetch_frame_list(ele, frames, image_patch_size, output_dtype, patch_grid=False):
    started = time.monotonic()
    video, raw_metadata, sample_fps = load_frame_list(ele, frames, image_patch_size, patch_grid)
    timestamps = raw_metadata.pop("timestamps", None)
    nframes, _, height, width = video.shape
    resized_height, resized_width = video_target_size(ele, nframes, height, width, image_patch_size)
    check_output_size(nframes, resized_height, resized_width, source="<list of frames>")
    out = resize_exact(video, resized_height, resized_width)
    if output_dtype != torch.float32:
        out = out.to(output_dtype)
    metadata = VideoMetadata(raw_metadata)
    metadata.info.update(
        sample_fps=sample_fps, nframes=int(nframes), resized_height=resized_height, resized_width=resized_width,
        source_height=int(height), source_width=int(width), decoder="frames", seconds=time.monotonic() - started,
        frames_patch_grid=patch_grid,
    )
    if timestamps is not None:
        metadata.info["timestamps"] = timestamps
    return out, metadata, sample_fps


# Text formats that make FFmpeg open *other* files or URLs named inside them (HLS, DASH,
# concat, SDP/RTSP descriptions). A stranger's URL or an allowed folder must not be able to
# point the decoder at arbitrary local files (or at addresses safe mode refuses).
_PLAYLIST_MAGIC = (b"#EXTM3U", b"ffconcat", b"<?xml", b"<MPD", b"v=0")


def refuse_playlist(path: str, value: Any) -> None:
    """Refuse playlist/manifest files whatever their name; every backend is affected."""
    # O_NONBLOCK: opening a FIFO must not block here, outside the decode time limit
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        head = os.read(fd, 256)
    except BlockingIOError:
        head = b""
    finally:
        os.close(fd)
    head = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(_PLAYLIST_MAGIC) or b"<MPD" in head:
        raise UnsupportedSourceError(
            "playlists and manifests (HLS, DASH, concat, SDP) are not accepted: they make the decoder "
            "open other files or URLs", _label(value))


def source_suffix(value: Any) -> str:
    """The file extension of a video path or URL (``".mp4"``), or "" (temporary copies keep it:
    some demuxers probe by name)."""
    if isinstance(value, str) and not value.startswith("data:"):
        tail = value.split("?", 1)[0].rsplit("/", 1)[-1]
        if "." in tail:
            ext = "." + tail.rsplit(".", 1)[-1]
            if 1 < len(ext) <= 6 and ext[1:].isalnum():
                return ext
    return ""


def _short_label(value: Any) -> str:
    return describe_source(value, 80)


__all__ = ["fetch_video", "read_video", "video_source", "video_timeout", "DEFAULT_TIMEOUT", "TIMEOUT_ENV"]


# The name this helper had before it was public (other modules used it); new code uses the public one.
_suffix = source_suffix
