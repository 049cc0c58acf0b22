"""decord backend: the reader qwen-vl-utils uses by default (optional dependency).

decord runs in a child process (``_decord_child.py``, which imports only decord and
numpy) because decord can hang inside C++ on some files: at the deadline the process
is killed, so nothing is left running. Frames stream back through a pipe one at a
time, fetched with ``get_batch`` in chunks of ``CHUNK``, so memory stays bounded.
decord applies rotation metadata itself.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ...clitext import install_hint
from ...errors import DecodeError
from .base import FrameSink, Probe

logger = logging.getLogger(__name__)
CHUNK = 4
CHILD = Path(__file__).with_name("_decord_child.py")


def _short(exc: BaseException | str) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


class DecordReader:
    """Talks to one decord child process; ``abort()`` kills it (safe from any thread)."""

    name = "decord"

    def __init__(self, path: str, source: Any, threads: int = 0):
        self.source = source
        self._lock = threading.Lock()
        self._aborted = False
        self._probe: Probe | None = None
        self._proc = subprocess.Popen(
            [sys.executable, str(CHILD), path, str(threads), str(CHUNK)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"},
        )

    def _read_exact(self, size: int) -> bytearray:
        data = bytearray()
        stdout = self._proc.stdout
        while len(data) < size:
            chunk = stdout.read(size - len(data))
            if not chunk:
                break
            data += chunk
        return data  # writable: frames are wrapped without a copy

    def _message(self) -> tuple[bytes, bytearray]:
        head = self._read_exact(9)
        if len(head) < 9:
            code = self._proc.wait()
            if self._aborted:
                raise DecodeError("decord was stopped", self.source)
            raise DecodeError(f"the decord process died (exit code {code})", self.source)
        kind, length = bytes(head[:1]), struct.unpack("<Q", head[1:])[0]
        payload = self._read_exact(length)
        if len(payload) < length:
            raise DecodeError("the decord process died mid-frame", self.source)
        if kind == b"E":
            info = json.loads(payload)
            raise DecodeError(f"decord failed ({info['stage']}: {info['error']})", self.source)
        return kind, payload

    def probe(self) -> Probe:
        if self._probe is None:
            kind, payload = self._message()
            if kind != b"P":
                raise DecodeError(f"unexpected message {kind!r} from the decord process", self.source)
            info = json.loads(payload)
            if info["total_frames"] <= 0:
                raise DecodeError("the video stream has no frames", self.source)
            self._probe = Probe(total_frames=info["total_frames"], fps=info["fps"],
                                timestamps=info["timestamps"], keyframes=info["keyframes"])
        return self._probe

    def read(self, indices: Sequence[int], sink: FrameSink, should_stop: Callable[[], bool]) -> None:
        self.probe()
        try:
            self._proc.stdin.write((json.dumps([int(i) for i in indices]) + "\n").encode())
            self._proc.stdin.flush()
        except OSError:
            pass  # the child died; the next read reports how
        sized = False
        while not should_stop():
            kind, payload = self._message()
            if kind == b"D":
                return
            index, height, width = struct.unpack("<qII", payload[:16])
            frame = np.frombuffer(payload, dtype=np.uint8, offset=16).reshape(height, width, 3)
            if not sized:
                sink.target_size(height, width)
                sized = True
            sink.put(index, frame)

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            if self._proc.poll() is None:
                self._proc.kill()

    def close(self) -> None:
        self.abort()
        self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


class DecordBackend:
    name = "decord"
    supports_fast_resize = False

    def unavailable_reason(self) -> str | None:
        try:
            import decord  # noqa: F401, PLC0415 - checks that its library loads; decoding runs in a child
        except Exception as exc:
            return f"decord cannot be imported ({_short(exc)}); install it with {install_hint('decord')}"
        return None

    def open(self, path: str, source: Any, threads: int = 0) -> DecordReader:
        return DecordReader(path, source, threads)
