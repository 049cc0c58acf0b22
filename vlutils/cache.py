"""A bounded in-memory cache of fetched and resized media, off by default.

Chat servers resend the same images every turn; with a cache each is downloaded, decoded and
resized once::

    vlutils.set_cache(vlutils.MediaCache(max_bytes=2 * 2**30))     # process-wide
    with vlutils.cache.use(MediaCache(max_bytes=...)):             # or per request / task
        ...
    VLUTILS_CACHE_BYTES=2147483648                                 # or from the environment

Keys are the source's identity (the URL; a local file's real path, size and mtime_ns, so an
edited file is fetched again; data URIs, base64 and bytes by SHA-256; frame lists by their
frames) plus every option that changes the result (the item's options, patch size, backend,
dtype, fetch settings) and the active safe-mode policy. The policy's source checks run before
every lookup, so a cached item never bypasses a stricter policy. In-memory objects (PIL images,
arrays) are never cached.

Results are copied in and out (``Image.copy()``, ``Tensor.clone()``), so callers may modify what
they get without corrupting the cache; the cost is one memory copy per hit (about 1 ms per
1280x960 image, 0.1-0.5 s per GB of video) and the cache's bytes on top of the caller's.
Each process has its own cache: a forked child (a DataLoader worker) starts with an empty one
and a fresh lock.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import hashlib
import os
import threading
import weakref
from typing import Any, Callable, Iterator

from . import cancel as _cancel
from . import policy as _policy
from .errors import InvalidOptionError

_UNSET: Any = object()
ENV_VAR = "VLUTILS_CACHE_BYTES"


class MediaCache:
    """LRU cache of fetched media within ``max_bytes`` (thread-safe; one per process)."""

    def __init__(self, max_bytes: int):
        if not isinstance(max_bytes, (int, float)) or isinstance(max_bytes, bool) or not 0 <= max_bytes < float("inf"):
            raise InvalidOptionError(f"max_bytes must be a non-negative number of bytes, got {max_bytes!r}")
        self.max_bytes = int(max_bytes)  # 2e9 is a fine way to write it
        self._reset()
        _instances.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[Any, tuple[Any, int]] = collections.OrderedDict()
        self._pending: dict[Any, threading.Event] = {}
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0

    def stats(self) -> dict[str, int]:
        """``hits``, ``misses``, ``bytes``, ``items``, ``evictions`` and ``max_bytes``."""
        with self._lock:
            return {"hits": self._hits, "misses": self._misses, "bytes": self._bytes,
                    "items": len(self._entries), "evictions": self._evictions, "max_bytes": self.max_bytes}

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def get_or_compute(self, key: Any, compute: Callable[[], Any], size: Callable[[Any], int],
                       copy: Callable[[Any], Any]) -> Any:
        """A copy of the value under ``key``, computing (and storing a copy of) it on a miss.

        Concurrent misses of one key compute it once: the others wait for that result."""
        while True:
            with self._lock:
                entry = self._entries.get(key)
                waiting = mine = None
                if entry is not None:
                    self._entries.move_to_end(key)
                    self._hits += 1
                elif key in self._pending:
                    waiting = self._pending[key]
                else:
                    self._misses += 1
                    mine = self._pending[key] = threading.Event()
            if entry is not None:
                return copy(entry[0])  # stored values are never modified: copy outside the lock
            if mine is not None:
                break
            while not waiting.wait(0.05):  # another thread is fetching it; its own limits bound this
                _cancel.check()
            # then look again: stored (a hit), or it failed / was too large (this thread fetches)
        try:
            result = compute()
            self._store(key, copy(result), size(result))
            return result
        finally:
            with self._lock:
                self._pending.pop(key, None)
            mine.set()

    def _store(self, key: Any, value: Any, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
                self._evictions += 1

    def __repr__(self) -> str:
        s = self.stats()
        return f"MediaCache(max_bytes={self.max_bytes}, items={s['items']}, bytes={s['bytes']})"


# ------------------------------------------------------------------ activation

_instances: "weakref.WeakSet[MediaCache]" = weakref.WeakSet()
_global_cache: Any = _UNSET
_env_cache: tuple[str | None, MediaCache | None] | None = None
_context_cache: contextvars.ContextVar[Any] = contextvars.ContextVar("vlutils_cache", default=_UNSET)


def set_cache(cache: MediaCache | None) -> None:
    """Use ``cache`` process-wide; ``None`` removes it (then only ``VLUTILS_CACHE_BYTES``, if set,
    gives one; ``with vlutils.cache.use(None)`` turns caching off whatever the environment says)."""
    global _global_cache
    if cache is not None and not isinstance(cache, MediaCache):
        raise InvalidOptionError(f"set_cache expects a MediaCache or None, got {type(cache).__name__}")
    _global_cache = _UNSET if cache is None else cache


def reset_cache() -> None:
    """Same as ``set_cache(None)``."""
    set_cache(None)


@contextlib.contextmanager
def use(cache: MediaCache | None) -> Iterator[MediaCache | None]:
    """Use ``cache`` in this thread / asyncio task only (a contextvar); ``None`` disables it."""
    if cache is not None and not isinstance(cache, MediaCache):
        raise InvalidOptionError(f"use() expects a MediaCache or None, got {type(cache).__name__}")
    token = _context_cache.set(cache)
    try:
        yield cache
    finally:
        _context_cache.reset(token)


def current() -> MediaCache | None:
    """The active cache: a :func:`use` block, else :func:`set_cache`, else ``VLUTILS_CACHE_BYTES``."""
    value = _context_cache.get()
    if value is _UNSET:
        value = _global_cache
    if value is _UNSET:
        value = _from_env()
    return value


def _from_env() -> MediaCache | None:
    global _env_cache
    raw = os.environ.get(ENV_VAR)
    if _env_cache is not None and _env_cache[0] == raw:
        return _env_cache[1]
    cache = None
    if raw is not None and raw.strip() not in ("", "0"):
        try:
            cache = MediaCache(int(float(raw)))
        except (ValueError, InvalidOptionError):
            raise InvalidOptionError(f"{ENV_VAR} must be a number of bytes, got {raw!r}") from None
    _env_cache = (raw, cache)
    return cache


def _after_fork_in_child() -> None:
    # the parent's lock may have been held by another thread at fork: never reuse it
    for cache in list(_instances):
        cache._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------- keys


def source_identity(value: Any) -> Any:
    """A hashable identity for a media source, or ``None`` when it has none (not cached).

    Runs the active policy's source checks first (scheme, allowed roots, URL addresses),
    so that a refusal happens before any cache hit."""
    from .sources import Base64Text, looks_like_base64, file_uri_to_path

    if isinstance(value, dict) and "url" in value:
        return source_identity(value["url"])
    if isinstance(value, (list, tuple)):
        parts = [source_identity(v) for v in value]
        return None if any(p is None for p in parts) else ("frames", tuple(parts))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ("bytes", hashlib.sha256(value).hexdigest())
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        return None  # in-memory objects
    if isinstance(value, Base64Text):
        _policy.check_scheme("base64", value)
        return ("base64", _digest(value))
    text = value.strip()
    lowered = text[:12].lower()
    if lowered.startswith(("http://", "https://")):
        _policy.check_url(text)
        return ("url", text)
    if lowered.startswith("data:"):
        _policy.check_scheme("data", value)
        return ("data", _digest(text))
    is_uri = lowered.startswith("file://")
    if is_uri or os.path.exists(text) or (_policy.current() is not None and not looks_like_base64(text)):
        # the same order as vlutils.sources.resolve_source: the policy sees the path before any stat
        checked = _policy.check_path(file_uri_to_path(text) if is_uri else text, value)
        try:
            st = os.stat(checked)
        except OSError:
            return None  # the fetch reports it
        return ("file", os.path.realpath(checked), st.st_size, st.st_mtime_ns)
    if looks_like_base64(text):
        _policy.check_scheme("base64", value)
        return ("base64", _digest(text))
    return None


def options_key(element: dict, skip: tuple[str, ...]) -> tuple:
    """The item's options (everything but its source keys), hashable and order-independent."""
    return tuple(sorted((str(k), repr(v)) for k, v in element.items() if k not in skip))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


__all__ = ["MediaCache", "set_cache", "reset_cache", "use", "current", "source_identity", "options_key", "ENV_VAR"]
