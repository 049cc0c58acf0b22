#!/usr/bin/env python
"""Video loading benchmark: vlutils (each backend) vs qwen-vl-utils 0.0.14 (decord) vs the
decode floor, on generated videos. Each measurement runs in its own process; the table
reports the time of the call alone (imports excluded) and the process's peak RSS.

    python bench/bench_video.py                       # all cases, all runners
    python bench/bench_video.py --cases 60s,sparse16 --runners vlutils-pyav,reference-decord
    python bench/bench_video.py --repeat 3 --json bench/out/video.json

Videos are generated once into bench/media/ (git-ignored) with PyAV: FFmpeg's testsrc2
pattern encoded with libx264 (see MEDIA: preset veryfast, a keyframe every 250 frames; the
10-minute file without B-frames). `--runners vlutils-pyav-w4` sets VLUTILS_VIDEO_THREADS=4.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
logger = logging.getLogger("bench_video")

# name: (width, height, seconds, x264 options). The frames of FFmpeg's lavfi source are
# marked as I-frames, which x264 would obey (an all-intra file): generate() clears that,
# so x264 picks the frame types: a keyframe every 250 frames (~8 s).
MEDIA = {
    "h264_640x480_60s_high.mp4": (640, 480, 60, {"preset": "veryfast"}),  # High profile, B-frames
    "h264_854x480_10min_nob.mp4": (854, 480, 600, {"preset": "veryfast", "bf": "0"}),  # no B-frames
    "h264_1920x1080_30s_high.mp4": (1920, 1080, 30, {"preset": "veryfast"}),
}
CASES = {
    "60s": ("h264_640x480_60s_high.mp4", {}),
    "10min": ("h264_854x480_10min_nob.mp4", {}),
    "1080p": ("h264_1920x1080_30s_high.mp4", {}),
    "sparse16": ("h264_854x480_10min_nob.mp4", {"nframes": 16}),
}
RUNNERS = [
    "reference-decord",
    "vlutils-pyav",
    "vlutils-pyav-w1",  # VLUTILS_VIDEO_THREADS=1: one decoder
    "vlutils-pyav-w2",  # two decoders (any -wN works)
    "vlutils-pyav-uint8",
    "vlutils-pyav-fast",
    "vlutils-decord",
    "vlutils-torchcodec",
    "floor-pyav",
    "floor-ffmpeg",
    "floor-ffmpeg-t1",  # ffmpeg -threads 1: one decoding core, the yardstick
]


# ----------------------------------------------------------------------------- media
def generate(path: Path, width: int, height: int, seconds: int, options: dict, rate: int = 30) -> None:
    """testsrc2 -> libx264 with PyAV; written to a temp name, then renamed."""
    import av

    tmp = path.with_suffix(".part.mp4")
    logger.info("generating %s (%dx%d, %ds)...", path.name, width, height, seconds)
    src = av.open(f"testsrc2=size={width}x{height}:rate={rate}:duration={seconds}", format="lavfi")
    with src, av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in src.decode(video=0):
            frame = frame.reformat(format="yuv420p")
            frame.pts = None
            frame.pict_type = av.video.frame.PictureType.NONE  # let x264 choose (see MEDIA)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    tmp.rename(path)


def ensure_media(media: Path, names: set[str]) -> None:
    media.mkdir(parents=True, exist_ok=True)
    for name in sorted(names):
        if not (media / name).exists():
            generate(media / name, *MEDIA[name])


# ----------------------------------------------------------------------------- child
def peak_rss_mb() -> float:
    """Peak RSS of this process (the kernel's exact high-water mark)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds(who: int) -> float:
    """User + system CPU time (all threads): less sensitive to other jobs than wall time."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class TreeSampler:
    """Samples RSS of this process plus its children every 20 ms during a call, so the
    decord backend's decoding child counts (RUSAGE_CHILDREN would also count helpers
    forked at import time, which report the parent's size)."""

    def __init__(self):
        import threading

        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            import psutil
        except ImportError:
            return
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                total = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
            except psutil.Error:
                total = 0
            self.peak = max(self.peak, total / 2**20)
            self._stop.wait(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def child(runner: str, path: str, options: dict, warm: bool = False) -> dict:
    """Run one measurement in this (fresh) process and return its figures. The decoder
    library is imported before the clock starts (both sides import theirs lazily); ``warm``
    times a third call, as in a long-lived worker (two calls first, and what they started in
    the background finished)."""
    ele = {"video": path, **options}
    if runner.startswith("floor-ffmpeg"):
        ffmpeg = shutil.which("ffmpeg")
        if not ffmpeg:
            return {"skipped": "ffmpeg CLI not installed"}
        threads = "1" if runner.endswith("-t1") else "0"
        cpu = cpu_seconds(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([ffmpeg, "-v", "error", "-threads", threads, "-i", path, "-map", "0:v:0", "-f", "null", "-"],
                       check=True)
        return {"seconds": time.perf_counter() - start, "cpu_s": cpu_seconds(resource.RUSAGE_CHILDREN) - cpu}
    if runner == "floor-pyav":
        import av

        start = time.perf_counter()
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            count = sum(1 for _ in container.decode(stream))
        return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "frames": count}
    import torch

    if runner == "reference-decord":
        os.environ["FORCE_QWENVL_VIDEO_READER"] = "decord"
        import decord  # noqa: F401
        from qwen_vl_utils import vision_process as vp

        call = lambda: vp.fetch_video(ele, return_video_sample_fps=True)  # noqa: E731
    else:
        import av  # noqa: F401

        from vlutils.video import fetch_video
        from vlutils.video import VIDEO_READER_BACKENDS

        backend = runner.split("-")[1]
        reason = VIDEO_READER_BACKENDS[backend].unavailable_reason()
        if reason:
            return {"skipped": reason}
        kwargs = {"backend": backend}
        workers = re.fullmatch(r"vlutils-pyav-w(\d+)", runner)
        if workers:
            os.environ["VLUTILS_VIDEO_THREADS"] = workers.group(1)
        if runner.endswith("-uint8"):
            kwargs["output_dtype"] = torch.uint8
        if runner.endswith("-fast"):
            kwargs["fast_resize"] = True
        call = lambda: fetch_video(ele, return_video_sample_fps=True, **kwargs)  # noqa: E731
    if warm:  # steady state of a long-lived worker: earlier calls done, background work finished
        import threading

        for _ in range(2):
            call()
        for thread in threading.enumerate():
            if thread.name.startswith("vlutils-resize-plan"):
                thread.join()
    base_rss = peak_rss_mb()
    with TreeSampler() as tree:
        cpu = cpu_seconds(resource.RUSAGE_SELF) + cpu_seconds(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        video, sample_fps = call()
        seconds = time.perf_counter() - start
        cpu = cpu_seconds(resource.RUSAGE_SELF) + cpu_seconds(resource.RUSAGE_CHILDREN) - cpu
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "peak_rss_mb": max(peak_rss_mb(), tree.peak),
        "rss_before_mb": base_rss,
        "output_mb": video.numel() * video.element_size() / 2**20,
        "shape": list(video.shape),
        "sample_fps": sample_fps,
    }


def run_child(runner: str, case: str, media: Path, timeout: float, warm: bool = False) -> dict:
    name, options = CASES[case]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", runner, str(media / name), json.dumps(options)]
    if warm:
        cmd.append("--warm")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    load = os.getloadavg()[0]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1][:200]}
    return {**json.loads(lines[-1]), "load": load}


# ----------------------------------------------------------------------------- table
def table(results: dict) -> str:
    """Markdown table. "overhead" = peak RSS - RSS just before the call - output tensor:
    the memory the call needed beyond its result (the torch import alone is ~500 MB).
    "x ffmpeg -threads 1": our time as a fraction of one-core FFmpeg's full decode.
    "load": the 1-minute load average when the measurement started (shared machine)."""
    rows = ["| case | runner | time (s) | CPU (s) | vs reference | x ffmpeg -threads 1 | peak RSS (MB) | before call (MB) "
            "| output (MB) | overhead (MB) | load |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case, by_runner in results.items():
        ref = by_runner.get("reference-decord", {}).get("seconds")
        one_core = by_runner.get("floor-ffmpeg-t1", {}).get("seconds")
        for runner, r in by_runner.items():
            if "seconds" not in r:
                rows.append(f"| {case} | {runner} | {r.get('skipped') or r.get('error')} | | | | | | | | |")
                continue
            s = r["seconds"]
            vs_ref = f"{ref / s:.2f}x faster" if ref and not runner.startswith(("reference", "floor")) else ""
            vs_floor = f"{s / one_core:.2f}x" if one_core and not runner.startswith("floor-ffmpeg") else ""
            cells = [f"{r[k]:.0f}" if r.get(k) is not None else "" for k in ("peak_rss_mb", "rss_before_mb", "output_mb")]
            overhead = ""
            if r.get("output_mb") is not None:
                overhead = f"{r['peak_rss_mb'] - r['rss_before_mb'] - r['output_mb']:.0f}"
            load = f"{r['load']:.1f}" if r.get("load") is not None else ""
            cpu = f"{r['cpu_s']:.2f}" if r.get("cpu_s") is not None else ""
            rows.append(f"| {case} | {runner} | {s:.2f} | {cpu} | {vs_ref} | {vs_floor} | {' | '.join(cells)} "
                        f"| {overhead} | {load} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(child(argv[1], argv[2], json.loads(argv[3]), warm=argv[4:5] == ["--warm"])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", default=str(HERE / "media"))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--runners", default=",".join(RUNNERS))
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over all runners (interleaved, so a noisy spell hits all); the fastest is kept")
    parser.add_argument("--warm", action="store_true",
                        help="time a third call in each process (a long-lived worker), not the first")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cases = [c for c in args.cases.split(",") if c]
    runners = [r for r in args.runners.split(",") if r]
    for name in cases + runners:
        if name not in CASES and name not in RUNNERS and not re.fullmatch(r"vlutils-pyav-w\d+", name):
            parser.error(f"unknown case/runner {name!r}")
    media = Path(args.media)
    ensure_media(media, {CASES[c][0] for c in cases})
    results: dict = {}
    for case in cases:
        results[case] = {}
        chosen = [r for r in runners
                  if not (case == "sparse16" and r.startswith("floor") and r != "floor-ffmpeg-t1")]
        for _ in range(args.repeat):
            for runner in chosen:
                r = run_child(runner, case, media, args.timeout, warm=args.warm and not runner.startswith("floor"))
                best = results[case].get(runner, {})
                if "seconds" in r and ("seconds" not in best or r["seconds"] < best["seconds"]) or not best:
                    results[case][runner] = r
                logger.info("%-9s %-20s %s", case, runner, json.dumps(r))
    report = table(results)
    print(report)
    load = os.getloadavg()
    print(f"\n{os.cpu_count()} CPUs, load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at the end; "
          f"python {sys.version.split()[0]}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
