"""Cooperative cancellation for work running in threads (the asyncio API's downloads and decodes).

A thread cannot be killed, so the async functions hand each worker a token (a contextvar
holding a ``threading.Event``); the download loop, the image decode and the video decode loop
check it between chunks / frames and stop with :class:`Cancelled`. Without a token (the sync
API) every check is a no-op.
"""

from __future__ import annotations

import contextvars
import socket
import threading
from typing import Any, Callable, Sequence

_token: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("vlutils_cancel", default=None)


class Token(threading.Event):
    """A cancel flag that also runs callbacks when set (to wake a thread blocked in a socket)."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []
        self._callbacks_lock = threading.Lock()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        with self._callbacks_lock:
            if not self.is_set():
                self._callbacks.append(callback)
                return
        _run(callback)

    def set(self) -> None:
        with self._callbacks_lock:
            super().set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _run(callback)


def _run(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:  # noqa: BLE001 - best effort: the socket may be closed already
        pass


def watch_socket(sock: Any) -> None:
    """Shut ``sock`` down when the current token is cancelled: a thread blocked reading it
    (waiting for a slow server's headers or body) wakes up at once instead of at its timeout."""
    token = _token.get()
    if sock is not None and isinstance(token, Token):
        token.on_cancel(lambda: sock.shutdown(socket.SHUT_RDWR))


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
