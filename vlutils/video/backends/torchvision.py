"""``torchvision`` backend name, kept valid for ``FORCE_QWENVL_VIDEO_READER=torchvision``.

torchvision 0.24+ has no ``read_video`` (and older ones decoded through PyAV anyway,
holding the whole clip in memory), so this backend decodes with the PyAV reader and
reports ``decoder="pyav"`` in the metadata.
"""

from __future__ import annotations

from typing import Any

from .pyav import PyAVReader


class TorchvisionReader(PyAVReader):
    name = "torchvision"


class TorchvisionBackend:
    name = "torchvision"
    supports_fast_resize = True
    decoder = "pyav"
    direct_output = True  # decodes in its own threads, which resize into the output

    def unavailable_reason(self) -> str | None:
        try:
            import av  # noqa: F401, PLC0415
        except ImportError as exc:  # pragma: no cover - av is a hard dependency
            return f"PyAV (av), which the torchvision backend decodes with, cannot be imported: {exc}"
        return None

    def open(self, path: str, source: Any, threads: int = 0) -> TorchvisionReader:
        return TorchvisionReader(path, source, threads)
