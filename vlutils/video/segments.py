"""Plan the wanted frames of a video into segments that separate decoders can decode at
the same time.

A segment starts at a keyframe (decoding from it reproduces every later frame exactly,
see below) and lists the wanted frames it delivers, in presentation order. The plan
decodes exactly what one decoder seeking forward would: a wanted frame whose keyframe
lies beyond the next frame to decode starts a new run at that keyframe; otherwise the
run continues. Long runs are then cut at keyframes into pieces of about equal work
(frames from the start to the last wanted frame) so that every worker stays busy.

Why a keyframe is a safe start, also in open-GOP streams (h264 I-frames with a recovery
point, hevc CRA): the frames after such a keyframe in display order reference only it
and later frames; only the "leading" frames shown before it reference the previous
GOP, and those belong to the previous segment, which decodes past the keyframe to
deliver them. ``tests/test_video_segments.py`` checks every frame against a sequential
decode on open-GOP h264 (B-pyramid) and hevc files.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

PIECES_PER_WORKER = 12  # many pieces per worker: uneven GOPs and a busy machine still end together


@dataclass
class Segment:
    """Decode from frame ``start`` (a keyframe, or 0) and deliver ``frames`` (sorted)."""

    start: int
    frames: list[int] = field(default_factory=list)

    @property
    def cost(self) -> int:
        """Frames decoded (presentation order), the unit of work."""
        return self.frames[-1] - self.start + 1


def keyframe_before(keyframes: list[int], frame: int) -> int:
    """The last keyframe at or before ``frame`` (0 when there is none: decode from the start)."""
    k = bisect.bisect_right(keyframes, frame) - 1
    return keyframes[k] if k >= 0 else 0


def plan_runs(wanted: list[int], keyframes: list[int]) -> list[Segment]:
    """Runs of one forward-seeking decoder: a new run where skipping ahead saves work."""
    runs: list[Segment] = []
    for frame in wanted:
        key = keyframe_before(keyframes, frame)
        if runs and key <= runs[-1].frames[-1] + 1:
            runs[-1].frames.append(frame)
        else:
            runs.append(Segment(key, [frame]))
    return runs


def split_run(run: Segment, keyframes: list[int], target: int) -> list[Segment]:
    """Cut ``run`` at keyframes into pieces of at least ``target`` frames of work."""
    pieces = [Segment(run.start, [])]
    for frame in run.frames:
        key = keyframe_before(keyframes, frame)
        current = pieces[-1]
        if current.frames and key > current.start and key - current.start >= target:
            pieces.append(Segment(key, [frame]))
        else:
            current.frames.append(frame)
    return pieces


def plan_segments(wanted: list[int], keyframes: list[int], workers: int) -> list[Segment]:
    """Segments for ``workers`` decoders, in presentation order (see the module docstring).

    ``wanted`` must be sorted and unique; ``keyframes`` sorted frame indices.
    """
    if not wanted:
        return []
    runs = plan_runs(wanted, keyframes)
    if workers <= 1:
        return runs
    total = sum(run.cost for run in runs)
    target = max(1, total // (workers * PIECES_PER_WORKER))
    segments: list[Segment] = []
    for run in runs:
        segments.extend(split_run(run, keyframes, target) if run.cost > target else [run])
    return segments
