"""Benchmark: vlutils vs qwen-vl-utils 0.0.14 on the same image inputs, in one run.

    .venv/bin/python bench/bench_images.py [--reps 5] [--cases photo,message8,png,datauri]

Cases: one phone photo (4032x3024 JPEG, default options), a message of 8 phone photos
with ``max_pixels=1280*28*28``, a 2000x1500 PNG, and a data URI (1280x960 JPEG).
Timing: both libraries in this process, calls interleaved so that load from other
processes hits both alike; median wall time (and CPU time) per call after a warm-up.
Memory: every (library, case) pair runs once more in its own subprocess: ``peak`` is
that process's high-water RSS (imports included), ``work`` the peak minus the RSS
right before the call. Outputs are hashed and compared: the table says whether they
are identical. Generated media
go to ``bench/media/`` (git-ignored). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEDIA = HERE / "media"
CASES = ("photo", "message8", "png", "datauri")
LIBS = ("qwen-vl-utils", "vlutils")


# ----------------------------------------------------------------------------- media


def photo_array(width: int, height: int, seed: int):
    """Photo-like content: smooth gradients, soft shapes, fine noise (realistic JPEG sizes)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    img = np.empty((height, width, 3), dtype=np.float32)
    for ch in range(3):
        a, b, c, f = rng.uniform(60, 200), rng.uniform(-80, 80), rng.uniform(-80, 80), rng.uniform(2, 9)
        img[..., ch] = a + b * x + c * y + 25 * np.sin(f * x + 3 * y + ch)
    for _ in range(12):  # discs and rectangles with soft shading
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.2)
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        if rng.random() < 0.5:
            mask = ((x - cx) ** 2 + ((y - cy) * height / width) ** 2) < r * r
        else:
            mask = (abs(x - cx) < r) & (abs(y - cy) < r * 0.6)
        shade = (0.75 + 0.25 * x) * (0.8 + 0.2 * y)
        img = np.where(mask[..., None], colour * shade[..., None], img)
    img += rng.normal(0.0, 6.0, size=(height, width, 1)).astype(np.float32)
    img += rng.normal(0.0, 3.0, size=(height, width, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def ensure_media() -> dict:
    """Create the inputs once (deterministic); returns paths."""
    from PIL import Image

    MEDIA.mkdir(parents=True, exist_ok=True)
    paths = {"phones": [], "png": MEDIA / "screen.png", "small": MEDIA / "small.jpg"}
    for i in range(8):
        size = (4032, 3024) if i % 2 == 0 else (4000, 3000)
        if i == 3:
            size = (3024, 4032)  # one portrait
        path = MEDIA / f"phone{i}_{size[0]}x{size[1]}.jpg"
        if not path.exists():
            Image.fromarray(photo_array(*size, seed=i)).save(path, "JPEG", quality=90)
        paths["phones"].append(path)
    if not paths["png"].exists():
        Image.fromarray(photo_array(2000, 1500, seed=100)).save(paths["png"], "PNG")
    if not paths["small"].exists():
        Image.fromarray(photo_array(1280, 960, seed=200)).save(paths["small"], "JPEG", quality=90)
    return paths


def case_messages(case: str, paths: dict) -> list[dict]:
    if case == "photo":
        content = [{"type": "image", "image": str(paths["phones"][0])}]
    elif case == "message8":
        content = [{"type": "image", "image": str(p), "max_pixels": 1280 * 28 * 28} for p in paths["phones"]]
    elif case == "png":
        content = [{"type": "image", "image": str(paths["png"])}]
    elif case == "datauri":
        uri = "data:image/jpeg;base64," + base64.b64encode(paths["small"].read_bytes()).decode()
        content = [{"type": "image", "image": uri}]
    else:
        raise ValueError(case)
    return [{"role": "user", "content": content + [{"type": "text", "text": "Describe."}]}]


def describe_case(case: str, paths: dict) -> str:
    mb = lambda p: p.stat().st_size / 1e6  # noqa: E731
    if case == "photo":
        return f"1 JPEG 4032x3024 ({mb(paths['phones'][0]):.1f} MB)"
    if case == "message8":
        total = sum(mb(p) for p in paths["phones"])
        return f"8 JPEGs ~4000x3000 ({total:.0f} MB), max_pixels=1280*28*28"
    if case == "png":
        return f"1 PNG 2000x1500 ({mb(paths['png']):.1f} MB)"
    return f"data URI, JPEG 1280x960 ({mb(paths['small']) * 4 / 3:.2f} MB base64)"


# ----------------------------------------------------------------------------- measuring


def proc_status_kib(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB: VmRSS (now) or VmHWM (peak of this process image;
    unlike ru_maxrss it does not inherit the parent's high-water mark across fork/exec)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def load_lib(lib: str):
    if lib == "vlutils":
        from vlutils import process_vision_info
    else:
        from qwen_vl_utils import process_vision_info
    return process_vision_info


def memory_worker(lib: str, case: str) -> dict:
    """Runs in a fresh subprocess: peak RSS of one call (after imports and inputs)."""
    process_vision_info = load_lib(lib)
    messages = case_messages(case, ensure_media())
    baseline = proc_status_kib("VmRSS")
    process_vision_info(messages)
    peak = proc_status_kib("VmHWM")
    return {"peak_rss": peak * 1024, "work_rss": max(0, peak - baseline) * 1024}


def run_memory_worker(lib: str, case: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(HERE.parent) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory-worker", lib, "--cases", case],
        capture_output=True, text=True, env=env, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{lib} {case} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def digest(images) -> str:
    h = hashlib.sha256()
    for image in images:
        h.update(f"{image.mode}{image.size}".encode())
        h.update(image.tobytes())
    return h.hexdigest()


def time_case(case: str, paths: dict, reps: int) -> dict:
    """Both libraries in this process, calls interleaved (ABBA...) so that load from other
    processes on the machine hits both sides alike. Returns medians and output digests."""
    funcs = {lib: load_lib(lib) for lib in LIBS}
    messages = case_messages(case, paths)
    out = {lib: {"times": [], "cpu": []} for lib in LIBS}
    for lib in LIBS:  # warm-up, and the outputs that must be identical
        images, _ = funcs[lib](messages)
        out[lib]["digest"] = digest(images)
        out[lib]["sizes"] = [image.size for image in images]
        del images
    for rep in range(reps):
        order = LIBS if rep % 2 == 0 else LIBS[::-1]
        for lib in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            funcs[lib](messages)
            out[lib]["times"].append(time.perf_counter() - start)
            out[lib]["cpu"].append(time.process_time() - start_cpu)
    for lib in LIBS:
        out[lib]["median"] = statistics.median(out[lib]["times"])
        out[lib]["cpu_median"] = statistics.median(out[lib]["cpu"])
    return out


# ----------------------------------------------------------------------------- main


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="timed calls per case and library (after one warm-up)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--workers-sweep", action="store_true",
                        help="also time vlutils on each case with 1, 2, 4 and 8 fetch workers")
    parser.add_argument("--json", help="also write the rows to this file (read by bench/charts.py)")
    parser.add_argument("--memory-worker", choices=LIBS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, cases[0])))
        return

    paths = ensure_media()
    from importlib.metadata import version

    import PIL

    import vlutils

    rows, records, all_same = [], [], True
    for case in cases:
        timing = time_case(case, paths, args.reps)
        memory = {lib: (None if args.no_memory else run_memory_worker(lib, case)) for lib in LIBS}
        ref, ours = timing["qwen-vl-utils"], timing["vlutils"]
        same = ref["digest"] == ours["digest"] and ref["sizes"] == ours["sizes"]
        all_same &= same

        def rss(lib):
            m = memory[lib]
            return "-" if m is None else f"{m['peak_rss'] / 2**20:.0f} / {m['work_rss'] / 2**20:.0f}"

        records.append({
            "case": case, "input": describe_case(case, paths), "identical": same,
            **{f"{key}_{side}": timing[lib][stat] * 1000 for side, lib in (("reference", "qwen-vl-utils"), ("vlutils", "vlutils"))
               for key, stat in (("wall_ms", "median"), ("cpu_ms", "cpu_median"))},
            **{f"peak_rss_mib_{side}": (None if memory[lib] is None else memory[lib]["peak_rss"] / 2**20)
               for side, lib in (("reference", "qwen-vl-utils"), ("vlutils", "vlutils"))},
        })
        rows.append(
            f"| {case} | {describe_case(case, paths)} | {ref['median'] * 1000:.0f} ({ref['cpu_median'] * 1000:.0f}) "
            f"| {ours['median'] * 1000:.0f} ({ours['cpu_median'] * 1000:.0f}) | {ref['median'] / ours['median']:.2f}x "
            f"| {ref['cpu_median'] / ours['cpu_median']:.2f}x | {ours['cpu_median'] / ours['median']:.2f} "
            f"| {rss('qwen-vl-utils')} | {rss('vlutils')} | {'yes' if same else '**NO**'} |"
        )
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[0]
    print(
        f"Machine: {machine()}, load average {load} at the end; Pillow {PIL.__version__}, "
        f"vlutils {vlutils.__version__}, qwen-vl-utils {version('qwen-vl-utils')}. "
        f"Median wall (CPU) ms of {args.reps} interleaved calls after 1 warm-up; "
        "peak RSS = process high-water mark incl. imports, work = peak minus RSS before the call, "
        "each library in its own process. 'cores used' = vlutils CPU / wall time: about 2 on an idle "
        "2-core machine, lower when other processes compete for the cores."
    )
    print()
    print("| case | input | qwen-vl-utils ms (CPU) | vlutils ms (CPU) | speed-up | CPU ratio | vlutils cores used "
          "| qwen peak / work RSS MiB | vlutils peak / work RSS MiB | identical output |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        print(row)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "benchmark": "images", "command": " ".join(["python", "bench/bench_images.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": machine(), "load_average_end": float(load),
            "reps": args.reps, "rows": records}, indent=1))
    if args.workers_sweep:
        print()
        print(workers_sweep(cases, paths, args.reps))
    if not all_same:
        raise SystemExit("outputs differ")


def workers_sweep(cases: list[str], paths: dict, reps: int) -> str:
    """vlutils wall/CPU per call with the thread pool capped at 1, 2, 4, 8 workers."""
    import vlutils.vision_process as vp

    counts = (1, 2, 4, 8)
    lines = ["| case | " + " | ".join(f"{n} worker{'s' * (n > 1)} ms (CPU)" for n in counts) + " |",
             "|---|" + "---:|" * len(counts)]
    saved = vp.MAX_FETCH_WORKERS
    try:
        for case in cases:
            messages = case_messages(case, paths)
            vp.process_vision_info(messages)
            cells = {n: ([], []) for n in counts}
            for rep in range(reps):  # interleaved, like the main table
                for n in counts if rep % 2 == 0 else counts[::-1]:
                    vp.MAX_FETCH_WORKERS = n
                    start, start_cpu = time.perf_counter(), time.process_time()
                    vp.process_vision_info(messages)
                    cells[n][0].append(time.perf_counter() - start)
                    cells[n][1].append(time.process_time() - start_cpu)
            lines.append(f"| {case} | " + " | ".join(
                f"{statistics.median(w) * 1000:.0f} ({statistics.median(c) * 1000:.0f})" for w, c in cells.values()
            ) + " |")
    finally:
        vp.MAX_FETCH_WORKERS = saved
    return "\n".join(lines)


if __name__ == "__main__":
    main()
