"""Dataset preparation at cluster scale: the driver's share, Ray on 2 nodes vs local, S3 vs local disk.

    .venv/bin/python bench/bench_prepare_cluster.py driver  --records 400 [--before DIR]
    .venv/bin/python bench/bench_prepare_cluster.py nodes   --records 60
    .venv/bin/python bench/bench_prepare_cluster.py s3      --records 60

``driver``: one job (``--records`` of the image/video mix; 400 records write about 1 GB) with
the local engine (2 workers) and with Ray (a local Ray), each run by a child process that
records its own CPU time (``getrusage``), its RSS after start-up (imports, Ray connected) and
its peak RSS (``VmHWM``), and the CPU time of every worker (waited children plus live
descendants: Ray's raylet and workers). With ``--before DIR`` (a checkout of the previous code,
e.g. ``git archive main | tar -x -C DIR``) the same runs use that code too, for the before/after
figures.

``nodes``: a real 2-node Ray cluster on this machine (``ray.cluster_utils.Cluster``, head and
worker with 1 CPU each) vs the local engine with 2 workers: records/s of the whole CLI run
(driver start, worker start and the job), and the cluster's start-up reported separately.

``s3``: the local engine writing to a SeaweedFS S3 store on loopback vs to local disk.

Data go to bench/media/prepare_cluster/ and bench/out/prepare_cluster/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "media" / "prepare_cluster"
OUT = HERE / "out" / "prepare_cluster"
QUIET_RAY = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def make_data(records: int, seed: int = 0) -> Path:
    """~3/4 image records (1-2 noise photos of 1024x768, resized to <= 401408 px), ~1/4 video
    records (10 s 640x360 clips at 2 fps, <= 100352 px a frame): about 2.5 MB of output each."""
    sys.path.insert(0, str(HERE))
    from bench_prepare import write_mix

    DATA.mkdir(parents=True, exist_ok=True)
    write_mix(DATA, records, seed, name=f"mix{records}.jsonl")
    spec = {"model_type": "qwen2_vl", "shard_size": 16, "sources": [
        {"name": "mix", "path": f"mix{records}.jsonl", "format": "sharegpt", "media_dir": "media",
         "image": {"max_pixels": 1003520}, "video": {"fps": 2.0, "max_pixels": 200704}}]}
    path = DATA / f"spec{records}.json"
    path.write_text(json.dumps(spec))
    tokenizer = DATA / "tokenizer.json"
    if not tokenizer.exists():
        sys.path.insert(0, str(ROOT))
        from tests._tiny_tokenizer import tiny_qwen_tokenizer

        tokenizer.write_text(tiny_qwen_tokenizer().to_str())
    return path


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------ the driver's share (child process)
def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measured_driver(argv: list[str], engine: str) -> dict:
    """Run ``vlutils prepare`` in this process and measure it (called in a child process)."""
    import psutil

    import vlutils.data.prepare  # noqa: F401 - start-up: what every run imports first
    import vlutils.data.cli as cli

    if engine == "ray":
        from vlutils.data.engine_ray import init_ray

        init_ray()
    base_rss = _rss_mb()
    descendants: dict[int, float] = {}

    def sample() -> None:
        for child in psutil.Process().children(recursive=True):
            try:
                times = child.cpu_times()
                descendants[child.pid] = times.user + times.system
            except psutil.Error:
                pass

    start = time.perf_counter()
    code = cli.main(argv)
    wall = time.perf_counter() - start
    sample()  # Ray's processes are alive until shutdown: their CPU so far
    me = resource.getrusage(resource.RUSAGE_SELF)
    waited = resource.getrusage(resource.RUSAGE_CHILDREN)  # local workers, joined by the pool
    driver_cpu = me.ru_utime + me.ru_stime
    workers_cpu = waited.ru_utime + waited.ru_stime + sum(descendants.values())
    return {"rc": code, "wall_s": wall, "driver_cpu_s": driver_cpu, "workers_cpu_s": workers_cpu,
            "driver_share": driver_cpu / (driver_cpu + workers_cpu), "rss_after_startup_mb": base_rss,
            "peak_rss_mb": _hwm_mb(), "rss_growth_mb": _hwm_mb() - base_rss}


def run_driver(code_dir: Path, label: str, engine: str, spec: Path, records: int) -> dict:
    out = OUT / f"driver_{label}_{engine}"
    shutil.rmtree(out, ignore_errors=True)
    argv = [str(spec), "--out", str(out), "--tokenizer", str(DATA / "tokenizer.json"), "--engine", engine, "--quiet"]
    if engine == "local":
        argv += ["--workers", "2"]
    env = {**os.environ, **QUIET_RAY, "PYTHONPATH": str(code_dir)}
    env.pop("RAY_ADDRESS", None)
    child = subprocess.run([sys.executable, __file__, "_measure", engine, json.dumps(argv)], env=env, cwd=code_dir,
                           capture_output=True, text=True, timeout=3600)
    if child.returncode != 0:
        raise RuntimeError(child.stderr[-3000:])
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result.update(code=label, engine=engine, records=records, output_bytes=_folder_bytes(out),
                  records_per_s=records / result["wall_s"])
    return result


# ------------------------------------------------------------------ Ray 2 nodes vs local 2 workers
def _cli(spec: Path, out: Path | str, extra: list[str], env: dict) -> float:
    command = [sys.executable, "-m", "vlutils", "prepare", str(spec), "--out", str(out), "--tokenizer",
               str(DATA / "tokenizer.json"), "--quiet", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return time.perf_counter() - start


def run_nodes(spec: Path, records: int) -> dict:
    from ray.cluster_utils import Cluster

    env = {**os.environ, **QUIET_RAY, "PYTHONPATH": str(ROOT)}
    shutil.rmtree(OUT / "nodes_local", ignore_errors=True)
    local_s = _cli(spec, OUT / "nodes_local", ["--workers", "2"], env)
    os.environ.update(QUIET_RAY)
    os.environ["PYTHONPATH"] = str(ROOT)
    start = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    startup_s = time.perf_counter() - start
    try:
        shutil.rmtree(OUT / "nodes_ray", ignore_errors=True)
        ray_s = _cli(spec, OUT / "nodes_ray", ["--engine", "ray"], {**env, "RAY_ADDRESS": cluster.address})
    finally:
        cluster.shutdown()
    same = all((OUT / "nodes_ray" / p.relative_to(OUT / "nodes_local")).read_bytes() == p.read_bytes()
               for p in (OUT / "nodes_local").rglob("*") if p.is_file() and p.name != "_lock")
    return {"records": records, "local_2_workers_s": local_s, "local_records_per_s": records / local_s,
            "ray_2_nodes_s": ray_s, "ray_records_per_s": records / ray_s, "ratio": local_s / ray_s,
            "cluster_startup_s": startup_s, "identical": same}


# ------------------------------------------------------------------ S3 vs local disk
def run_s3(spec: Path, records: int) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from _s3 import SeaweedFS

    from vlutils import storage

    store = SeaweedFS.start()
    try:
        bucket = store.bucket("bench")
        env = {**os.environ, **store.env, "PYTHONPATH": str(ROOT)}
        shutil.rmtree(OUT / "s3_local", ignore_errors=True)
        local_s = _cli(spec, OUT / "s3_local", ["--workers", "2"], env)
        s3_s = _cli(spec, f"{bucket}/out", ["--workers", "2"], env)
        same = all(storage.read_bytes(f"{bucket}/out/{p.relative_to(OUT / 's3_local')}",
                                      storage_options=store.storage_options) == p.read_bytes()
                   for p in (OUT / "s3_local").rglob("*") if p.is_file() and p.name != "_lock")
    finally:
        store.stop()
    return {"records": records, "output_bytes": _folder_bytes(OUT / "s3_local"), "local_disk_s": local_s,
            "s3_s": s3_s, "local_records_per_s": records / local_s, "s3_records_per_s": records / s3_s,
            "ratio": local_s / s3_s, "identical": same}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("driver", "nodes", "s3", "_measure"))
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--records", type=int, default=60)
    parser.add_argument("--before", type=Path, help="a checkout of the previous code (for before/after)")
    parser.add_argument("--engines", default="local,ray")
    args = parser.parse_args()
    if args.what == "_measure":
        print(json.dumps(measured_driver(json.loads(args.rest[1]), args.rest[0])))
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    spec = make_data(args.records)
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
            "load_before": os.getloadavg()[0]}
    if args.what == "driver":
        results = []
        for engine in args.engines.split(","):
            for label, code in (("after", ROOT), *((("before", args.before),) if args.before else ())):
                results.append(run_driver(code, label, engine, spec, args.records))
                print(json.dumps(results[-1]), flush=True)
        report = {**info, "driver": results}
    elif args.what == "nodes":
        report = {**info, "nodes": run_nodes(spec, args.records)}
    else:
        report = {**info, "s3": run_s3(spec, args.records)}
    report["load_after"] = os.getloadavg()[0]
    (OUT / f"{args.what}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
