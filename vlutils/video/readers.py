"""``VIDEO_READER_BACKENDS``: qwen-vl-utils' table of per-backend video readers.

``VIDEO_READER_BACKENDS[name](ele)`` returns ``(uint8 TCHW frames at source size, metadata,
sample_fps)`` without resizing, as in qwen-vl-utils 0.0.14; each entry is also the backend
object itself (``.unavailable_reason()``, ...). It sits above :mod:`vlutils.video.fetch` (whose
``read_video`` does the work) so that the backends package never imports fetch.
"""

from __future__ import annotations

from typing import Any

from .backends import Backend
from .backends.decord import DecordBackend
from .backends.pyav import PyAVBackend
from .backends.torchcodec import TorchcodecBackend
from .backends.torchvision import TorchvisionBackend
from .fetch import read_video

__all__ = ["VIDEO_READER_BACKENDS"]


class _Callable:
    """Makes a backend object callable as a qwen-vl-utils reader."""

    name: str

    def __call__(self, ele: dict[str, Any]):
        return read_video(ele, backend=self.name)


class _PyAV(_Callable, PyAVBackend):
    pass


class _Decord(_Callable, DecordBackend):
    pass


class _Torchcodec(_Callable, TorchcodecBackend):
    pass


class _Torchvision(_Callable, TorchvisionBackend):
    pass


VIDEO_READER_BACKENDS: dict[str, Backend] = {
    cls.name: cls() for cls in (_PyAV, _Decord, _Torchcodec, _Torchvision)
}
