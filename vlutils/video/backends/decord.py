"""decord backend: the reader qwen-vl-utils uses by default (optional dependency).

Frames are fetched with ``get_batch`` in small chunks, so at most ``CHUNK`` full-size
frames exist at a time. decord applies rotation metadata itself. A decord call that
never returns is abandoned by the caller's deadline (decord releases the GIL).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from ...errors import DecodeError
from .base import FrameSink, Probe

logger = logging.getLogger(__name__)
CHUNK = 8


class DecordReader:
    name = "decord"

    def __init__(self, path: str, source: Any, threads: int = 0):
        import decord  # noqa: PLC0415 - optional dependency

        self._decord = decord
        self.source = source
        try:
            self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
        except Exception as exc:  # decord raises DECORDError / RuntimeError with FFmpeg text
            raise DecodeError(f"decord cannot open the video ({_short(exc)})", source) from None

    def probe(self) -> Probe:
        total = len(self._vr)
        if total <= 0:
            raise DecodeError("the video stream has no frames", self.source)
        timestamps = None
        try:
            timestamps = [float(t) for t in self._vr.get_frame_timestamp(list(range(total)))[:, 0]]
        except Exception:  # older decord builds: index-based sampling only
            timestamps = None
        return Probe(total_frames=total, fps=float(self._vr.get_avg_fps()), timestamps=timestamps,
                     keyframes=[int(k) for k in self._vr.get_key_indices()])

    def read(self, indices: Sequence[int], sink: FrameSink, should_stop: Callable[[], bool]) -> None:
        indices = list(indices)
        sized = False
        for start in range(0, len(indices), CHUNK):
            if should_stop():
                return
            chunk = indices[start : start + CHUNK]
            try:
                batch = self._vr.get_batch(chunk).asnumpy()
            except Exception as exc:
                raise DecodeError(f"decord failed to decode frames {chunk[0]}..{chunk[-1]} ({_short(exc)})", self.source) from None
            if not sized:
                sink.target_size(batch.shape[1], batch.shape[2])
                sized = True
            for index, frame in zip(chunk, batch):
                sink.put(index, frame)

    def close(self) -> None:
        self._vr = None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


class DecordBackend:
    name = "decord"
    supports_fast_resize = False

    def unavailable_reason(self) -> str | None:
        try:
            import decord  # noqa: F401, PLC0415
        except Exception as exc:
            return f"decord cannot be imported ({_short(exc)}); install it with `pip install decord`"
        return None

    def open(self, path: str, source: Any, threads: int = 0) -> DecordReader:
        return DecordReader(path, source, threads)
