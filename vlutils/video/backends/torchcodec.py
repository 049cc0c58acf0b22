"""torchcodec backend (optional): PyTorch's FFmpeg-based decoder.

Opened in ``exact`` seek mode, which scans the packets so the frame count is exact (as
decord's). Frames come in small chunks of ``get_frames_at`` so memory stays bounded.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from ...errors import DecodeError
from .base import FrameSink, Probe

logger = logging.getLogger(__name__)
CHUNK = 8


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


class TorchcodecReader:
    name = "torchcodec"

    def __init__(self, path: str, source: Any, threads: int = 0):
        from torchcodec.decoders import VideoDecoder  # noqa: PLC0415 - optional dependency

        self.path, self.source = path, source
        try:
            self._decoder = VideoDecoder(path, seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=threads)
        except Exception as exc:
            raise DecodeError(f"torchcodec cannot open the video ({_short(exc)})", source) from None

    def probe(self) -> Probe:
        md = self._decoder.metadata
        total = int(md.num_frames or 0)
        if total <= 0:
            raise DecodeError("the video stream has no frames", self.source)
        return Probe(total_frames=total, fps=float(md.average_fps or 0.0), codec=md.codec,
                     timestamps=self._timestamps(total))

    def _timestamps(self, total: int) -> list[float] | None:
        """Per-frame times from PyAV's packet index (torchcodec exposes none without decoding),
        so variable-frame-rate video is sampled by time here as with the other backends."""
        from .pyav import PyAVReader  # noqa: PLC0415

        try:
            probe = PyAVReader(self.path, self.source).probe()
        except Exception:  # noqa: BLE001 - timestamps are an optional refinement
            return None
        return probe.timestamps if probe.total_frames == total else None

    def read(self, indices: Sequence[int], sink: FrameSink, should_stop: Callable[[], bool]) -> None:
        indices = list(indices)
        sized = False
        for start in range(0, len(indices), CHUNK):
            if should_stop():
                return
            chunk = indices[start : start + CHUNK]
            try:
                batch = self._decoder.get_frames_at(indices=chunk).data
            except Exception as exc:
                raise DecodeError(f"torchcodec failed to decode frames {chunk[0]}..{chunk[-1]} ({_short(exc)})", self.source) from None
            if not sized:
                sink.target_size(batch.shape[1], batch.shape[2])
                sized = True
            for index, frame in zip(chunk, batch.numpy()):
                sink.put(index, frame)

    def close(self) -> None:
        self._decoder = None


class TorchcodecBackend:
    name = "torchcodec"
    supports_fast_resize = False

    def unavailable_reason(self) -> str | None:
        try:
            from torchcodec.decoders import VideoDecoder  # noqa: F401, PLC0415
        except Exception as exc:  # ImportError, or RuntimeError when its FFmpeg/torch libs do not load
            return (f"torchcodec cannot be loaded ({_short(exc)}); it needs a matching torch build and "
                    "FFmpeg shared libraries (e.g. apt install ffmpeg)")
        return None

    def open(self, path: str, source: Any, threads: int = 0) -> TorchcodecReader:
        return TorchcodecReader(path, source, threads)
