"""The small interface every video backend implements.

A backend opens a local file and returns a :class:`Reader`; the reader reports a
:class:`Probe` (frame count, fps, timestamps) and then decodes the requested frame
indices in ascending order, handing each frame to a :class:`FrameSink` as soon as it
is decoded. Frames are RGB uint8, height x width x 3, already display-oriented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np


@dataclass
class Probe:
    """What a backend knows about a stream before decoding it.

    ``timestamps`` (seconds, presentation order, one per frame) and ``keyframes``
    (frame indices) are given when the backend read them from the packets.
    """

    total_frames: int
    fps: float
    timestamps: list[float] | None = None
    keyframes: list[int] | None = None
    codec: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class FrameSink(Protocol):
    """Receives decoded frames. ``fast_resize`` asks the backend to scale inside FFmpeg."""

    fast_resize: bool

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """Output ``(height, width)`` for display-oriented source frames of this size."""

    def put(self, index: int, frame: np.ndarray) -> None:
        """Take frame ``index`` (HWC uint8 RGB; already at target size when ``fast_resize``)."""


class Reader(Protocol):
    name: str

    def probe(self) -> Probe: ...

    def read(self, indices: Sequence[int], sink: FrameSink, should_stop: Callable[[], bool]) -> None:
        """Decode the sorted unique ``indices`` into ``sink``; return early if ``should_stop()``."""

    def close(self) -> None: ...


class Backend(Protocol):
    name: str
    supports_fast_resize: bool

    def unavailable_reason(self) -> str | None:
        """``None`` when the backend can be used here, else why not (import error, ...)."""

    def open(self, path: str, source: Any, threads: int) -> Reader: ...
