"""The shard plan: which records each shard holds, computed by streaming the record files once.

Records are numbered in one deterministic order: sources in spec order, a source's files in
sorted order, lines in file order (blank lines are not records). Shard ``k`` holds records
``[k * S, (k + 1) * S)`` (``S`` = shard size); a record that is rejected takes no row in the
shard but is listed in the rejected list with its place. So a shard is a pure function of the
spec and its number, and any worker anywhere can build it alone.

A :class:`ShardPlan` names its records by byte ranges of the record files (a few segments,
never the lines themselves), so the driver streams the plan in constant memory and a worker
reads just its range (a ranged GET on object storage).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

from .. import storage
from .build import Job
from .spec import DatasetSpec

READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Segment:
    """``count`` records of source ``source`` in bytes ``[start, end)`` of ``file``; the first
    of them is line ``first_index`` of the source (0-based, across its files, blank lines counted)."""

    source: int
    file: str
    start: int
    end: int
    first_index: int
    count: int


@dataclass(frozen=True)
class ShardPlan:
    number: int
    segments: tuple[Segment, ...]

    @property
    def records(self) -> int:
        return sum(s.count for s in self.segments)


def _scan_file(location: str, storage_options: Mapping[str, str] | None) -> Iterator[tuple[int, int, bool]]:
    """``(start, end, is_record)`` of every line of one file, read in 1 MiB chunks."""
    offset = 0
    rest = b""
    with storage.open_input(location, storage_options=storage_options) as handle:
        while True:
            chunk = handle.read(READ_CHUNK)
            if not chunk:
                break
            data = rest + chunk
            lines = data.split(b"\n")
            rest = lines.pop()
            for line in lines:
                end = offset + len(line) + 1
                yield offset, end, bool(line.strip())
                offset = end
    if rest:
        yield offset, offset + len(rest), bool(rest.strip())


def iter_plan(spec: DatasetSpec, shard_size: int, storage_options: Mapping[str, str] | None = None
              ) -> Iterator[ShardPlan]:
    """Every shard's plan, in order, streamed (memory: one shard's few segments)."""
    number = 0
    segments: list[Segment] = []
    in_shard = 0
    for s, source in enumerate(spec.sources):
        index = 0
        for file in source.files:
            seg_start = seg_first = None
            seg_count = seg_end = 0
            for start, end, is_record in _scan_file(file, storage_options):
                if is_record:
                    if seg_start is None:
                        seg_start, seg_first, seg_count = start, index, 0
                    seg_count += 1
                    seg_end = end
                    in_shard += 1
                    if in_shard == shard_size:
                        segments.append(Segment(s, file, seg_start, seg_end, seg_first, seg_count))
                        yield ShardPlan(number, tuple(segments))
                        number, segments, in_shard, seg_start = number + 1, [], 0, None
                index += 1
            if seg_start is not None:
                segments.append(Segment(s, file, seg_start, seg_end, seg_first, seg_count))
    if segments:
        yield ShardPlan(number, tuple(segments))


def _lines(data: bytes) -> list[bytes]:
    """Lines split on ``\n`` only (as the plan counted them), each keeping its newline."""
    lines = [line + b"\n" for line in data.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


def read_jobs(plan: ShardPlan, storage_options: Mapping[str, str] | None = None) -> Iterator[Job]:
    """The records of one shard (read by the worker that builds it: one ranged read per segment)."""
    for segment in plan.segments:
        with storage.open_input(segment.file, storage_options=storage_options) as handle:
            data = handle.read_at(segment.end - segment.start, segment.start)
        if len(data) != segment.end - segment.start:
            raise storage.StorageError(f"changed since the job was planned (bytes {segment.start}-{segment.end} "
                                       f"are no longer there)", segment.file)
        index, found = segment.first_index, 0
        for line in _lines(data):
            if line.strip():
                yield Job(segment.source, index, line, segment.file)
                found += 1
            index += 1
        if found != segment.count:
            raise storage.StorageError(f"changed since the job was planned ({found} records in bytes "
                                       f"{segment.start}-{segment.end}, planned {segment.count})", segment.file)
