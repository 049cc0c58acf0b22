"""Decode keyframe segments of one file with several PyAV decoders at once.

Each worker thread opens its own container and decoder (FFmpeg releases the GIL while
demuxing, decoding and converting), takes the next segment from the plan
(:mod:`..segments`), seeks to its keyframe and hands each wanted frame to the sink, which
resizes it into its slot of the preallocated output. The workers share the process's
thread budget (:mod:`..threads`). A failing worker stops the others and its error is
raised; the caller's stop flag (the decode time limit) stops them all between packets.

Anything that shows the index is not exact (a seek landing after its keyframe, a frame
with an unknown timestamp, a wanted frame the decoder never produced) raises
:class:`InexactIndex`, and the reader falls back to one forward pass, as before.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol

from ...errors import DecodeError
from .pyav_index import FrameIndex, decode_packet, import_av, open_container, short_error, video_stream
from ..segments import Segment, plan_segments
from ..threads import BUDGET, video_threads
from .base import FrameSink

# containers whose seek lands exactly on the requested keyframe (by their index)
EXACT_SEEK_FORMATS = ("mov", "mp4", "matroska", "webm", "avi")
_JOIN_POLL = 0.1


class SegmentReader(Protocol):
    """What segment decoding needs of the reader that calls it (``vlutils.video.backends.pyav.PyAVReader``;
    described here so that this module need not import pyav, which imports it)."""

    path: str
    source: Any
    skip_nonref: bool
    workers: int
    seeks: int
    decoded: int

    def converter(self, first: Any, sink: FrameSink) -> Callable[[Any], Any]: ...


class InexactIndex(Exception):
    """The frame index or seeking cannot be trusted for segment decoding."""


class _Stopped(Exception):
    """The caller or another worker asked to stop."""


def parallel_capable(index: FrameIndex | None) -> bool:
    """Exact timestamps, keyframes starting at frame 0, and a container that seeks exactly."""
    if index is None or index.sorted_pts is None or not index.probe.keyframes:
        return False
    if index.probe.keyframes[0] != 0:
        return False
    return any(name in EXACT_SEEK_FORMATS for name in index.container_format.split(","))


def read_parallel(reader: SegmentReader, index: FrameIndex, wanted: list[int], sink: FrameSink,
                  should_stop: Callable[[], bool]) -> None:
    """Decode ``wanted`` (sorted, unique) into ``sink`` with up to the thread budget's workers."""
    granted = BUDGET.acquire(video_threads())
    try:
        segments = plan_segments(wanted, index.probe.keyframes or [], granted)
        workers = max(1, min(granted, len(segments)))
        codec_threads = max(1, granted // workers)
        reader.workers = workers
        _run_workers(reader, index, segments, workers, codec_threads, sink, should_stop)
    finally:
        BUDGET.release(granted)


def _run_workers(reader, index, segments, workers, codec_threads, sink, should_stop) -> None:
    lock = threading.Lock()
    # longest first (LPT): the last segments handed out are short, so workers finish together
    queue = iter(sorted(segments, key=lambda segment: -segment.cost))
    errors: list[BaseException] = []
    failed = threading.Event()

    def stopped() -> bool:
        return failed.is_set() or should_stop()

    def next_segment() -> Segment | None:
        with lock:
            return next(queue, None)

    def work() -> None:
        _single_thread_torch()
        stats = {"seeks": 0, "decoded": 0}
        try:
            _worker(reader, index, next_segment, codec_threads, sink, stopped, stats)
        except _Stopped:
            pass
        except BaseException as exc:  # forwarded to the caller
            with lock:
                errors.append(exc)
            failed.set()
        finally:
            with lock:
                reader.seeks += stats["seeks"]
                reader.decoded += stats["decoded"]

    threads = [threading.Thread(target=work, name=f"vlutils-video-pyav-{i}", daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(_JOIN_POLL)
            if should_stop():
                return  # the caller is gone (time limit): workers stop between packets
    if errors:
        inexact = [e for e in errors if isinstance(e, InexactIndex)]
        raise (inexact or errors)[0]


def _worker(reader, index: FrameIndex, next_segment, codec_threads: int, sink, stopped, stats: dict) -> None:
    av = import_av()
    container = open_container(reader.path, reader.source)
    try:
        stream = video_stream(container)
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = codec_threads
        fresh = True  # positioned at the start of the file
        convert = None
        while not stopped():
            segment = next_segment()
            if segment is None:
                return
            convert = _decode_segment(reader, index, container, stream, segment, fresh, convert, sink, stopped, stats)
            fresh = False
    except av.FFmpegError as exc:
        raise DecodeError(f"decoding failed ({short_error(exc)})", reader.source) from None
    finally:
        container.close()


def _decode_segment(reader, index: FrameIndex, container, stream, segment: Segment, fresh: bool, convert,
                    sink, stopped, stats: dict):
    """Seek to ``segment.start`` and deliver its frames; returns the frame converter."""
    codec = stream.codec_context
    if segment.start > 0 or not fresh:
        container.seek(index.sorted_pts[segment.start], stream=stream, backward=True, any_frame=False)
        codec.flush_buffers()
        stats["seeks"] += 1
    index_of = index.index_of
    wanted = segment.frames
    wanted_set = set(wanted)
    skip_index = index_of if reader.skip_nonref else None
    skip_mode = codec.skip_frame = "DEFAULT"
    pos = 0
    landed = False
    for packet in container.demux(stream):
        if stopped():
            raise _Stopped
        frames, skip_mode = decode_packet(codec, packet, skip_mode, skip_index, wanted_set, reader.path)
        for frame in frames:
            stats["decoded"] += 1
            idx = index_of.get(frame.pts)
            if idx is None:
                raise InexactIndex(f"a decoded frame has an unknown timestamp ({frame.pts})")
            if idx < segment.start:
                continue  # the seek landed earlier, or a leading frame of an open GOP
            if not landed:
                if idx != segment.start:
                    raise InexactIndex(f"the seek to frame {segment.start} delivered frame {idx} first")
                landed = True
            if idx < wanted[pos]:
                continue
            if idx > wanted[pos]:
                raise InexactIndex(f"frame {wanted[pos]} was not decoded (frame {idx} came instead)")
            if convert is None:
                convert = reader.converter(frame, sink)
            sink.put(idx, convert(frame))
            pos += 1
            if pos == len(wanted):
                return convert
    raise InexactIndex(f"the stream ended before frame {wanted[pos]}")


def _single_thread_torch() -> None:
    """Resizes run in these threads: one torch thread each (see pipeline._single_thread_resize)."""
    import torch  # noqa: PLC0415 - already imported by the pipeline

    if "OpenMP" in torch.__config__.parallel_info():
        torch.set_num_threads(1)


__all__ = ["InexactIndex", "parallel_capable", "read_parallel", "EXACT_SEEK_FORMATS"]
