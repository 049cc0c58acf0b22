"""Backend registry and selection (``FORCE_QWENVL_VIDEO_READER`` is read at call time)."""

from __future__ import annotations

import logging
import os

from ...errors import BackendUnavailableError
from .base import Backend, FrameSink, Probe, Reader
from .decord import DecordBackend
from .pyav import PyAVBackend
from .torchcodec import TorchcodecBackend
from .torchvision import TorchvisionBackend

logger = logging.getLogger(__name__)

DEFAULT_BACKEND = "pyav"
ENV_VAR = "FORCE_QWENVL_VIDEO_READER"

# One instance per backend, by name. vlutils.video.BACKENDS (qwen-vl-utils'
# callable table) wraps these; it lives in vlutils.video.readers because calling a reader
# needs vlutils.video.fetch, which imports this module.
BACKENDS: dict[str, Backend] = {
    "pyav": PyAVBackend(),
    "decord": DecordBackend(),
    "torchcodec": TorchcodecBackend(),
    "torchvision": TorchvisionBackend(),
}


def get_video_reader_backend() -> str:
    """Name of the backend to use: ``FORCE_QWENVL_VIDEO_READER`` if set, else ``"pyav"``
    (always installed, and the fastest here: it streams and seeks; see bench/bench_video.py)."""
    forced = os.environ.get(ENV_VAR)
    if forced is not None and forced.strip():
        name = forced.strip().lower()
        if name not in BACKENDS:
            raise BackendUnavailableError(
                f"unknown video backend {forced!r} in {ENV_VAR}; choose one of {', '.join(BACKENDS)}"
            )
        return name
    return DEFAULT_BACKEND


def resolve_backend(name: str | None = None) -> Backend:
    """The backend object for ``name`` (default: :func:`get_video_reader_backend`), checked to load."""
    name = get_video_reader_backend() if name is None else str(name).strip().lower()
    backend = BACKENDS.get(name)
    if backend is None:
        raise BackendUnavailableError(
            f"unknown video backend {name!r}; choose one of {', '.join(BACKENDS)}"
        )
    reason = backend.unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"video backend {name!r} is unavailable: {reason}")
    return backend


__all__ = [
    "BACKENDS", "Backend", "FrameSink", "Probe", "Reader",
    "get_video_reader_backend", "resolve_backend", "DEFAULT_BACKEND",
]
