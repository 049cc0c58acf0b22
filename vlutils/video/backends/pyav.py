"""PyAV backend (the default): FFmpeg bundled with the ``av`` wheel, works everywhere.

Why it is fast and small: the frame index (:mod:`.pyav_index`: MP4/MOV sample tables, else
one cheap packet scan) gives the exact frame count, timestamps and keyframes. When the
container seeks exactly (mp4/mov, mkv/webm, avi) the wanted frames are planned into
keyframe segments (:mod:`..segments`) decoded by several decoders at once
(:mod:`.pyav_parallel`, up to ``VLUTILS_VIDEO_THREADS``); otherwise one decoder reads
forward, seeking to the keyframe before a wanted frame whenever that skips work. Either
way unwanted frames are dropped without converting them, and each wanted frame is
converted (optionally scaled inside FFmpeg) the moment it appears. Packets of unwanted
frames are sent with ``skip_frame=NONREF``, so the codec skips frames that no other frame
references (B-frames, mostly) instead of decoding them; frames that are wanted or
referenced decode exactly as usual (``VLUTILS_VIDEO_SKIP_NONREF=0`` turns this off).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence

import numpy as np

from ...errors import DecodeError
from ..segments import keyframe_before
from ..threads import BUDGET, video_threads
from .base import FrameSink, Probe
from .pyav_index import FrameIndex, decode_packet, open_container, quarter_turns, read_frame_index
from .pyav_index import import_av, short_error, video_stream
from .pyav_parallel import InexactIndex, parallel_capable, read_parallel

logger = logging.getLogger(__name__)

# Decoders whose skip_frame=NONREF skips only frames nothing references (checked against a
# sequential decode in tests/test_video_segments.py). libdav1d (AV1) is not one: skipping
# there changed frames the caller wanted, so other codecs decode every frame.
SKIP_NONREF_CODECS = frozenset({"h264", "hevc", "vp9", "mpeg4", "mpeg2video", "mpeg1video", "mjpeg"})


class PyAVReader:
    """Reads one file with PyAV. Not thread-safe; one reader per call."""

    name = "pyav"

    def __init__(self, path: str, source: Any, threads: int = 0):
        self.path, self.source, self.threads = path, source, threads
        self._index: FrameIndex | None = None
        self._sorted_pts: list[int] | None = None
        self._index_of: dict[int, int] | None = None
        self.rotation = 0
        self.skip_nonref = os.environ.get("VLUTILS_VIDEO_SKIP_NONREF", "1") != "0"
        self.seeks = 0
        self.decoded = 0
        self.workers = 1

    # ------------------------------------------------------------------ probe
    def probe(self) -> Probe:
        """Frame count, timestamps and keyframes (:func:`.pyav_index.read_frame_index`)."""
        if self._index is None:
            self._index = read_frame_index(self.path, self.source)
            self._sorted_pts, self._index_of = self._index.sorted_pts, self._index.index_of
            if self._index.probe.codec not in SKIP_NONREF_CODECS:
                self.skip_nonref = False
        return self._index.probe

    # ------------------------------------------------------------------- read
    def read(self, indices: Sequence[int], sink: FrameSink, should_stop: Callable[[], bool]) -> None:
        """Decode ``indices`` into ``sink``: keyframe segments in parallel where the
        container seeks exactly, else (or if that finds the index inexact) one forward pass."""
        self.probe()
        if parallel_capable(self._index):
            try:
                read_parallel(self, self._index, list(indices), sink, should_stop)
                return
            except InexactIndex as exc:
                logger.info("%s: %s; decoding with one forward pass", self.path, exc)
        self._read_forward(indices, sink, should_stop)

    def _read_forward(self, indices: Sequence[int], sink: FrameSink, should_stop: Callable[[], bool]) -> None:
        probe = self.probe()
        wanted = list(indices)
        keyframes = probe.keyframes or []
        can_seek = self._sorted_pts is not None and bool(keyframes)
        av = import_av()
        granted = BUDGET.acquire(video_threads())
        try:
            container = open_container(self.path, self.source)
        except BaseException:
            BUDGET.release(granted)
            raise
        try:
            stream = video_stream(container)
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = self.threads or granted
            codec = stream.codec_context
            wanted_set = set(wanted)
            skip_index = self._index_of if self.skip_nonref else None
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
                    frames, skip_mode = decode_packet(codec, packet, skip_mode, skip_index, wanted_set, self.path)
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
                            convert = self.converter(frame, sink)
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
            raise DecodeError(f"decoding failed ({short_error(exc)})", self.source) from None
        finally:
            container.close()
            BUDGET.release(granted)

    @staticmethod
    def _seek_target(keyframes: list[int], target: int, last: int) -> int | None:
        """The keyframe before ``target`` when it lies beyond the next frame to decode."""
        key = keyframe_before(keyframes, target)  # 0 when none: never beyond last + 1 >= 0
        return key if key > last + 1 else None

    def converter(self, first, sink: FrameSink) -> Callable[[Any], np.ndarray]:
        """Frame -> display-oriented HWC uint8 RGB, scaled in FFmpeg when ``sink.fast_resize``."""
        rotation = quarter_turns(first)
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
    direct_output = True  # decodes in its own threads, which resize into the output

    def unavailable_reason(self) -> str | None:
        try:
            import_av()
        except ImportError as exc:  # pragma: no cover - av is a hard dependency
            return f"PyAV (av) cannot be imported: {exc}"
        return None

    def open(self, path: str, source: Any, threads: int = 0) -> PyAVReader:
        return PyAVReader(path, source, threads)
