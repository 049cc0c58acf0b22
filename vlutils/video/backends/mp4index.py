"""Frame timestamps and keyframes of an MP4/MOV video track from its sample tables, without
reading the packets.

FFmpeg's mov demuxer already turns the ``stts``/``stss``/``stsz``/``stco`` tables (and the
edit list) into an index (PyAV: ``stream.index_entries``: decode timestamp, keyframe flag,
byte position and size of every sample). Presentation timestamps also need the
composition offsets (``ctts``), which PyAV does not expose, so this module reads that one
box itself. The result is trusted only when it is exact: no fragments, no samples the edit
list discards, every sample inside the file, and the first packets the demuxer returns
carry exactly the predicted timestamps; otherwise the caller scans the packets.
"""

from __future__ import annotations

import logging
import os
import struct
from typing import Any

logger = logging.getLogger(__name__)

MOV_FORMATS = ("mov", "mp4")
MAX_MOOV_BYTES = 64 << 20  # a larger moov is read by scanning packets instead
CHECK_PACKETS = 64  # leading packets compared against the prediction


def _boxes(data: bytes, start: int = 0, end: int | None = None):
    """``(type, payload_start, payload_end)`` of the boxes in ``data[start:end]``."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                return
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return
        yield kind, pos + header, pos + size
        pos += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    for k, s, e in _boxes(data, start, end):
        if k == kind:
            return s, e
    return None


def read_moov(path: str) -> bytes | None:
    """The ``moov`` box payload of ``path``, or None (absent, too large, malformed)."""
    with open(path, "rb") as fh:
        size_of_file = os.fstat(fh.fileno()).st_size
        pos = 0
        while pos + 8 <= size_of_file:
            fh.seek(pos)
            head = fh.read(16)
            if len(head) < 8:
                return None
            size, kind = struct.unpack_from(">I4s", head)
            header = 8
            if size == 1 and len(head) == 16:
                size, header = struct.unpack_from(">Q", head, 8)[0], 16
            elif size == 0:
                size = size_of_file - pos
            if size < header:
                return None
            if kind == b"moov":
                if size > MAX_MOOV_BYTES or pos + size > size_of_file:
                    return None
                fh.seek(pos + header)
                return fh.read(size - header)
            pos += size
    return None


def composition_offsets(moov: bytes, track_id: int) -> list[int] | None:
    """Per-sample composition offsets (``ctts``, expanded; ``[]`` when the track has none),
    or None when the movie is fragmented or the track is not found."""
    if _child(moov, 0, len(moov), b"mvex") is not None:
        return None  # fragmented: samples live in moof boxes the sample tables do not list
    for kind, start, end in _boxes(moov):
        if kind != b"trak":
            continue
        tkhd = _child(moov, start, end, b"tkhd")
        if tkhd is None:
            continue
        version = moov[tkhd[0]]
        id_at = tkhd[0] + (20 if version == 1 else 12)
        if struct.unpack_from(">I", moov, id_at)[0] != track_id:
            continue
        box = (start, end)
        for name in (b"mdia", b"minf", b"stbl"):
            box = _child(moov, box[0], box[1], name)
            if box is None:
                return None
        ctts = _child(moov, box[0], box[1], b"ctts")
        if ctts is None:
            return []
        count = struct.unpack_from(">I", moov, ctts[0] + 4)[0]
        if ctts[0] + 8 + 8 * count > ctts[1]:
            return None
        pairs = struct.unpack_from(f">{2 * count}i", moov, ctts[0] + 8)
        offsets: list[int] = []
        for n, offset in zip(pairs[::2], pairs[1::2]):
            offsets.extend([offset] * n)
        return offsets
    return None


def sample_table_index(container: Any, stream: Any, path: str) -> tuple[list[int], list[bool]] | None:
    """``(pts per sample in decode order, keyframe flags)`` from the MP4/MOV sample tables,
    or None when they cannot be trusted to equal a packet scan (see the module docstring)."""
    if not any(name in container.format.name.split(",") for name in MOV_FORMATS):
        return None
    try:
        entries = stream.index_entries
        count = len(entries)
        declared = stream.frames or 0
        if count == 0 or count != declared:
            return None
        moov = read_moov(path)
        offsets = composition_offsets(moov, stream.id) if moov is not None else None
        if offsets is None or (offsets and len(offsets) != count):
            return None
        file_size = os.path.getsize(path)
        shift = max(0, -min(offsets)) if offsets else 0
        pts: list[int] = []
        keys: list[bool] = []
        for i, entry in enumerate(entries):
            if entry.is_discard or entry.pos < 0 or entry.pos + entry.size > file_size:
                return None  # edited-out samples, or data past the end: a truncated file
            pts.append(entry.timestamp + shift + (offsets[i] if offsets else 0))
            keys.append(bool(entry.is_keyframe))
    except (AttributeError, struct.error, OSError, IndexError):
        logger.debug("%s: sample tables unreadable", path, exc_info=True)
        return None
    if not _leading_packets_match(container, stream, pts, keys):
        logger.info("%s: sample tables disagree with the packets; scanning", path)
        return None
    return pts, keys


def _leading_packets_match(container: Any, stream: Any, pts: list[int], keys: list[bool]) -> bool:
    """The first packets' timestamps and keyframe flags equal the predicted ones."""
    n = 0
    for packet in container.demux(stream):
        if packet.size == 0 and packet.pts is None and packet.dts is None:
            break
        if n >= len(pts) or packet.pts != pts[n] or bool(packet.is_keyframe) != keys[n]:
            return False
        n += 1
        if n >= CHECK_PACKETS:
            break
    return n == min(len(pts), CHECK_PACKETS)
