"""PyAV backend (the default): FFmpeg bundled with the ``av`` wheel, works everywhere.

Why it is fast and small: the packet index (read once, cheap) gives the exact frame
count, timestamps and keyframes; decoding then seeks to the keyframe before a wanted
frame whenever that skips work, drops unwanted frames without converting them, and
converts each wanted frame (optionally scaling it inside FFmpeg) the moment it appears.
Packets of unwanted frames are sent with ``skip_frame=NONREF``, so the codec skips
frames that no other frame references (B-frames, mostly) instead of decoding them;
frames that are wanted or referenced decode exactly as usual
(``VLUTILS_VIDEO_SKIP_NONREF=0`` turns this off).
"""

from __future__ import annotations

import bisect
import logging
import os
from typing import Any, Callable, Sequence

import numpy as np

from ...errors import DecodeError
from .base import FrameSink, Probe

logger = logging.getLogger(__name__)


def _import_av():
    import av  # noqa: PLC0415 - av is a hard dependency, imported lazily to keep `import vlutils` light

    return av


def _open_container(path: str, source: Any):
    av = _import_av()
    try:
        container = av.open(path, mode="r", metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not a readable video ({_short(exc)})", source) from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise DecodeError(f"no video stream (streams: {', '.join(kinds)})", source)
    return container


def _video_stream(container):
    """FFmpeg's best video stream (as decord picks it): not a cover-art picture stream."""
    return container.streams.best("video") or container.streams.video[0]


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:160] + "..."


class PyAVReader:
    """Reads one file with PyAV. Not thread-safe; one reader per call."""

    name = "pyav"

    def __init__(self, path: str, source: Any, threads: int = 0):
        self.path, self.source, self.threads = path, source, threads
        self._probe: Probe | None = None
        self._sorted_pts: list[int] | None = None
        self._index_of: dict[int, int] | None = None
        self.rotation = 0
        self.skip_nonref = os.environ.get("VLUTILS_VIDEO_SKIP_NONREF", "1") != "0"
        self.seeks = 0
        self.decoded = 0

    # ------------------------------------------------------------------ probe
    def probe(self) -> Probe:
        """Frame count, timestamps and keyframes from the packets (headers are not trusted:
        mkv/webm report no frame count, and some files report a wrong one)."""
        if self._probe is not None:
            return self._probe
        av = _import_av()
        container = _open_container(self.path, self.source)
        scan_error = None
        try:
            stream = _video_stream(container)
            time_base = stream.time_base
            rate = stream.average_rate or stream.guessed_rate
            codec = stream.codec_context.name
            declared_frames = stream.frames or 0
            declared_seconds = None
            if stream.duration and time_base:
                declared_seconds = float(stream.duration * time_base)
            elif container.duration:
                declared_seconds = container.duration / 1_000_000
            stamps: list[int | None] = []
            keys: list[bool] = []
            try:
                for packet in container.demux(stream):
                    if packet.size == 0 and packet.pts is None and packet.dts is None:
                        continue  # the flush packet PyAV yields at end of stream
                    stamps.append(packet.pts if packet.pts is not None else packet.dts)
                    keys.append(packet.is_keyframe)
            except av.FFmpegError as exc:
                scan_error = exc
        finally:
            container.close()
        if scan_error is not None:
            raise DecodeError(
                f"the file is truncated or corrupt: reading packets failed after {len(stamps)} frame(s) "
                f"({_short(scan_error)})",
                self.source,
            )
        if not stamps:
            raise DecodeError("the video stream has no frames", self.source)
        if declared_frames > len(stamps):
            raise DecodeError(
                f"the file is truncated: its header declares {declared_frames} frames but only "
                f"{len(stamps)} are present",
                self.source,
            )
        timestamps = keyframes = None
        if None not in stamps and len(set(stamps)) == len(stamps):
            self._sorted_pts = sorted(stamps)
            self._index_of = {pts: i for i, pts in enumerate(self._sorted_pts)}
            first = self._sorted_pts[0]
            tb = float(time_base) if time_base else 0.0
            timestamps = [(p - first) * tb for p in self._sorted_pts] if tb else None
            keyframes = sorted(self._index_of[p] for p, k in zip(stamps, keys) if k)
        else:
            logger.info("%s: packets lack unique timestamps; frames are counted in decode order", self.path)
        fps = float(rate) if rate else 0.0
        if fps <= 0 and timestamps and timestamps[-1] > 0:
            fps = (len(stamps) - 1) / timestamps[-1]
        if declared_seconds and timestamps and fps > 0 and not declared_frames:
            covered = timestamps[-1] + 1.0 / fps
            if declared_seconds - covered > max(2.0 / fps, 0.05 * declared_seconds):
                raise DecodeError(
                    f"the file is truncated: its header declares {declared_seconds:.2f}s but frames "
                    f"cover only {covered:.2f}s",
                    self.source,
                )
        self._probe = Probe(
            total_frames=len(stamps), fps=fps, timestamps=timestamps, keyframes=keyframes, codec=codec
        )
        return self._probe

    # ------------------------------------------------------------------- read
    def read(self, indices: Sequence[int], sink: FrameSink, should_stop: Callable[[], bool]) -> None:
        probe = self.probe()
        wanted = list(indices)
        keyframes = probe.keyframes or []
        can_seek = self._sorted_pts is not None and bool(keyframes)
        av = _import_av()
        container = _open_container(self.path, self.source)
        try:
            stream = _video_stream(container)
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = self.threads
            codec = stream.codec_context
            wanted_set = set(wanted)
            skip_unwanted = self.skip_nonref and self._index_of is not None
            skip_mode = "DEFAULT"
            pos = 0
            last = -1  # index of the last frame that came out of the decoder
            seek_to = self._seek_target(keyframes, wanted[0], last) if can_seek else None
            convert = None
            while pos < len(wanted):
                just_seeked = False
                if seek_to is not None:
                    container.seek(self._sorted_pts[seek_to], stream=stream, backward=True, any_frame=False)
                    codec.flush_buffers()
                    self.seeks += 1
                    last, seek_to, just_seeked = seek_to - 1, None, True
                for packet in container.demux(stream):
                    if should_stop():
                        return
                    if skip_unwanted:
                        # a non-reference frame nobody wants need not be decoded at all
                        mode = "DEFAULT" if packet.pts is None or self._index_of.get(packet.pts, -1) in wanted_set else "NONREF"
                        if mode != skip_mode:
                            codec.skip_frame = skip_mode = mode
                    try:
                        frames = codec.decode(packet)
                    except av.FFmpegError as exc:
                        logger.warning("%s: skipping undecodable packet: %s", self.path, _short(exc))
                        continue
                    for frame in frames:
                        self.decoded += 1
                        idx = self._index_of.get(frame.pts) if self._index_of is not None else None
                        idx = last + 1 if idx is None else idx
                        if just_seeked and idx > wanted[pos]:
                            # the seek landed after the wanted frame (containers without an exact
                            # index, e.g. MPEG-TS): stop seeking, decode from the start
                            logger.info("%s: inexact seek (frame %d for %d); decoding sequentially", self.path, idx, wanted[pos])
                            can_seek, seek_to = False, None
                            container.seek(0, stream=stream, backward=True, any_frame=False)
                            codec.flush_buffers()
                            self.seeks += 1
                            last, just_seeked = -1, False
                            break
                        just_seeked = False
                        last = idx
                        if idx < wanted[pos]:
                            continue
                        if idx > wanted[pos]:
                            logger.warning("%s: frames %d..%d never decoded; using frame %d", self.path, wanted[pos], idx - 1, idx)
                        if convert is None:
                            convert = self._converter(frame, sink)
                        array = convert(frame)
                        while pos < len(wanted) and wanted[pos] <= idx:
                            sink.put(wanted[pos], array)
                            pos += 1
                        if pos == len(wanted):
                            return
                        if can_seek:
                            seek_to = self._seek_target(keyframes, wanted[pos], last)
                            if seek_to is not None:
                                break
                    else:
                        continue
                    break  # a seek is due (or the inexact-seek restart happened)
                else:  # end of stream
                    if can_seek and self.seeks:
                        # a seek may have skipped frames (inexact index): one sequential pass
                        logger.info("%s: stream ended after seeking; decoding from the start", self.path)
                        can_seek, seek_to = False, None
                        container.seek(0, stream=stream, backward=True, any_frame=False)
                        codec.flush_buffers()
                        self.seeks += 1
                        last = -1
                        continue
                    break
            if pos < len(wanted):
                if pos == 0:
                    raise DecodeError("no frame could be decoded", self.source)
                raise DecodeError(
                    f"the stream ended after frame {last}, but frame {wanted[pos]} was expected "
                    f"({probe.total_frames} frames in the index): the file is probably truncated",
                    self.source,
                )
        except av.FFmpegError as exc:
            raise DecodeError(f"decoding failed ({_short(exc)})", self.source) from None
        finally:
            container.close()

    @staticmethod
    def _seek_target(keyframes: list[int], target: int, last: int) -> int | None:
        """The keyframe before ``target`` when it lies beyond the next frame to decode."""
        k = bisect.bisect_right(keyframes, target) - 1
        if k >= 0 and keyframes[k] > last + 1:
            return keyframes[k]
        return None

    def _converter(self, first, sink: FrameSink) -> Callable[[Any], np.ndarray]:
        """Frame -> display-oriented HWC uint8 RGB, scaled in FFmpeg when ``sink.fast_resize``."""
        rotation = int(round((first.rotation or 0) / 90.0)) % 4  # counterclockwise quarter turns
        self.rotation = rotation * 90
        swap = rotation % 2 == 1
        height, width = (first.width, first.height) if swap else (first.height, first.width)
        out_h, out_w = sink.target_size(height, width)
        if swap:
            out_h, out_w = out_w, out_h

        def convert(frame) -> np.ndarray:
            if sink.fast_resize:
                array = frame.to_ndarray(format="rgb24", width=out_w, height=out_h, interpolation="BICUBIC")
            else:
                array = frame.to_ndarray(format="rgb24")
            if rotation:
                array = np.ascontiguousarray(np.rot90(array, k=rotation))
            return array

        return convert

    def close(self) -> None:
        pass


class PyAVBackend:
    name = "pyav"
    supports_fast_resize = True

    def unavailable_reason(self) -> str | None:
        try:
            _import_av()
        except ImportError as exc:  # pragma: no cover - av is a hard dependency
            return f"PyAV (av) cannot be imported: {exc}"
        return None

    def open(self, path: str, source: Any, threads: int = 0) -> PyAVReader:
        return PyAVReader(path, source, threads)
