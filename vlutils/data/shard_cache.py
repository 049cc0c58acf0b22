"""A bounded local cache of remote shard files, shared by every process on a node.

Why this shape: DataLoader workers (forked or spawned) and several training processes on one node
read the same dataset, so the cache is a directory, not an object: its state is what the directory
holds, and every decision is taken under one lock file (``fcntl.flock`` on ``.lock``), never from
counters kept in memory.

- A shard is fetched into ``<name>.partial``, which is created at its full size (``ftruncate``) under
  the lock, so a download in flight already counts in the usage; the fetching process holds a
  ``flock`` on it until it renames it into place (atomic), so a ``.partial`` whose lock can be taken
  belongs to a dead process and is removed.
- Before a fetch reserves its space, least recently used shards (oldest modification time; every
  open touches the file) are deleted until the reservation fits ``limit_bytes``. If it does not fit
  because other downloads are in flight, the fetch waits for them; if it does not fit although
  nothing else is left (the limit is smaller than this shard), it goes ahead: the directory then
  exceeds the limit by less than this one shard, never more.
- A cached shard is opened under the lock, so eviction can never remove it between the check and
  the open; a reader keeps reading an evicted shard through its open file (POSIX), which is why
  readers keep only a few shards open (the space of an evicted file returns when it is closed).
- Two processes wanting the same missing shard fetch it once: the second waits for the first's
  ``.partial``.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from contextlib import contextmanager
from typing import Any, BinaryIO, Callable, Iterator

logger = logging.getLogger(__name__)

__all__ = ["CacheError", "ShardCache", "default_cache_dir"]

LOCK = ".lock"
PARTIAL = ".partial"
POLL_SECONDS = 0.05


def _open_binary(path: str) -> BinaryIO:
    return open(path, "rb")


class CacheError(OSError):
    """A shard could not be brought into (or read from) the local cache; names the shard and why."""


def default_cache_dir() -> str:
    """``$VLUTILS_CACHE_DIR``, else ``$XDG_CACHE_HOME/vlutils/shards`` (``~/.cache/vlutils/shards``)."""
    if os.environ.get("VLUTILS_CACHE_DIR"):
        return os.environ["VLUTILS_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vlutils", "shards")


def check_limit(limit_bytes: int | None) -> None:
    """A cache limit is a positive int of bytes, or None (no limit)."""
    if limit_bytes is not None and (isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int)
                                    or limit_bytes < 1):
        raise ValueError(f"cache_limit_bytes must be a positive int or None, got {limit_bytes!r}")


class ShardCache:
    """Files named by key in ``directory``, at most ``limit_bytes`` in all (None: no limit).

    ``wait_seconds`` bounds how long :meth:`open` waits for another process's download of the same
    shard, or for space held by downloads in flight, before raising :class:`CacheError`.
    """

    def __init__(self, directory: str, limit_bytes: int | None = None, *, wait_seconds: float = 900.0):
        check_limit(limit_bytes)
        self.directory, self.limit_bytes, self.wait_seconds = directory, limit_bytes, wait_seconds
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cache directory {directory}: cannot create it ({exc.strerror})") from None

    def open(self, key: str, size: int, fetch: Callable[[BinaryIO], None],
             opener: Callable[[str], Any] = _open_binary) -> Any:
        """The cached file ``key`` opened for reading; fetched first when missing.

        ``size``: the file's exact size in bytes (the reservation, and the check of what was fetched).
        ``fetch(out)`` writes the file's bytes to ``out`` from offset 0. ``opener(path)`` opens the
        cached file (default: ``open(path, "rb")``; e.g. ``pyarrow.OSFile`` for native reads); it is
        called under the lock, so the file cannot be evicted before it is open.
        """
        if "/" in key or key.startswith(".") or key.endswith(PARTIAL):
            raise ValueError(f"cache key {key!r}: must be a plain file name")
        final = os.path.join(self.directory, key)
        partial = final + PARTIAL
        deadline = time.monotonic() + self.wait_seconds
        while True:
            with self._locked():
                handle = self._open_cached(final, size, opener)
                if handle is not None:
                    return handle
                if not self._in_flight(partial) and self._make_room(size, exclude=partial):
                    fd = self._reserve(partial, size)
                    break
            if time.monotonic() > deadline:
                raise CacheError(f"{key}: waited {self.wait_seconds:.0f} s for another process's download or for "
                                 f"space in {self.directory} (limit {self.limit_bytes} bytes)")
            time.sleep(POLL_SECONDS)
        try:
            with os.fdopen(os.dup(fd), "r+b") as out:
                fetch(out)
                out.flush()
                written = out.tell()
            if written != size:
                raise CacheError(f"{key}: fetched {written} bytes, expected {size} (changed while reading?)")
            with self._locked():
                os.replace(partial, final)
                handle = self._open_cached(final, size, opener)
            if handle is None:
                raise CacheError(f"{key}: vanished from {self.directory} right after it was fetched")
            return handle
        except BaseException:
            _unlink(partial)
            raise
        finally:
            os.close(fd)  # releases the flock on the .partial

    def usage(self) -> int:
        """Bytes in the cache directory now (cached shards and reserved downloads)."""
        return sum(size for _, size, _ in self._entries())

    # -- helpers, all called with the lock held (except _locked itself) -------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.directory, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _open_cached(self, final: str, size: int, opener: Callable[[str], Any]) -> Any:
        try:
            actual = os.stat(final).st_size
        except FileNotFoundError:
            return None
        if actual != size:  # torn by a crash of the machine, or a stale copy
            logger.warning("%s: %d bytes in the cache, expected %d; fetching it again", final, actual, size)
            _unlink(final)
            return None
        handle = opener(final)
        os.utime(final)  # most recently used
        return handle

    def _in_flight(self, partial: str) -> bool:
        """True while a live process fetches ``partial``; removes it when its owner died."""
        try:
            fd = os.open(partial, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return True
            raise
        finally:
            os.close(fd)
        logger.warning("%s: left by a process that died while fetching it; removing it", partial)
        _unlink(partial)
        return False

    def _entries(self) -> list[tuple[str, int, float]]:
        """(path, size, mtime) of every file but the lock."""
        out = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name == LOCK:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                out.append((entry.path, st.st_size, st.st_mtime))
        return out

    def _make_room(self, size: int, exclude: str) -> bool:
        """Evict least recently used shards until ``size`` more bytes fit; False: wait for downloads."""
        if self.limit_bytes is None:
            return True
        entries = self._entries()
        usage = sum(s for _, s, _ in entries)
        partials = [p for p, _, _ in entries if p.endswith(PARTIAL) and p != exclude]
        live = [p for p in partials if self._in_flight(p)]
        if len(live) != len(partials):  # dead downloads were removed: count again
            entries = self._entries()
            usage = sum(s for _, s, _ in entries)
        for path, shard_size, _ in sorted((e for e in entries if not e[0].endswith(PARTIAL)), key=lambda e: e[2]):
            if usage + size <= self.limit_bytes:
                break
            _unlink(path)
            usage -= shard_size
            logger.debug("evicted %s (%d bytes)", path, shard_size)
        return usage + size <= self.limit_bytes or not live

    def _reserve(self, partial: str, size: int) -> int:
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            _unlink(partial)
            raise
        return fd


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
