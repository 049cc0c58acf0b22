"""Cooperative cancellation for work running in threads (the asyncio API's downloads and decodes).

A thread cannot be killed, so the async functions hand each worker a token (a contextvar
holding a ``threading.Event``); the download loop, the image decode and the video decode loop
check it between chunks / frames and stop with :class:`Cancelled`. Without a token (the sync
API) every check is a no-op.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any, Callable, Sequence

_token: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("vlutils_cancel", default=None)


class Cancelled(Exception):
    """The call that started this work was cancelled (not an input error: never a ValueError)."""


def current() -> threading.Event | None:
    """The cancel token of the running work, if any (read it in the caller's thread)."""
    return _token.get()


def set_token(event: threading.Event) -> contextvars.Token:
    return _token.set(event)


def check(event: threading.Event | None = None) -> None:
    """Raise :class:`Cancelled` when the current (or given) token is set."""
    event = event if event is not None else _token.get()
    if event is not None and event.is_set():
        raise Cancelled("cancelled")


def wrap_backend(backend: Any, event: threading.Event | None) -> Any:
    """``backend`` whose readers also stop between frames once ``event`` is set (the decode
    thread does not carry contextvars, so the token is bound here)."""
    return backend if event is None else _Backend(backend, event)


class _Backend:
    def __init__(self, backend: Any, event: threading.Event):
        self._backend, self._event = backend, event

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def open(self, path: str, source: Any, threads: int) -> Any:
        check(self._event)
        return _Reader(self._backend.open(path, source, threads), self._event)


class _Reader:
    def __init__(self, reader: Any, event: threading.Event):
        self._reader, self._event = reader, event

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def read(self, indices: Sequence[int], sink: Any, should_stop: Callable[[], bool]) -> None:
        event = self._event
        return self._reader.read(indices, sink, lambda: event.is_set() or should_stop())
