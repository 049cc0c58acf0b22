"""``prepare --engine ray`` on a real 2-node Ray cluster on this machine (a head and a worker node,
each its own raylet with 1 CPU, started by ``ray.cluster_utils.Cluster``), driven by the CLI in
a subprocess with ``RAY_ADDRESS`` as a user would: shards land on both nodes, the worker node is
killed mid-run and the job still finishes with the local engine's bytes; the driver is SIGKILLed
and the rerun reuses the finished shards. A clean run prints no warnings."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._datasets import make_mixture, save_tokenizer

pytest.importorskip("pyarrow")
ray = pytest.importorskip("ray")

from vlutils.data import prepare  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "_lock"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster_data")
    spec = make_mixture(root, records=6)
    tokenizer = save_tokenizer(root / "tokenizer.json")
    reference = root / "local"
    prepare(str(spec), str(reference), str(tokenizer), workers=2, shard_size=2)
    return spec, tokenizer, reference


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster, worker
    finally:
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _command(spec, out, tokenizer):
    return [sys.executable, "-m", "vlutils", "prepare", str(spec), "--out", str(out), "--tokenizer", str(tokenizer),
            "--engine", "ray", "--shard-size", "2"]


def _start(command, address):
    env = {**os.environ, **ENV, "RAY_ADDRESS": address}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_reports(out: Path, count: int, process, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if len(list((out / "_reports").glob("*.json"))) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{count} shards were not finished in time (rc={process.poll()})")


def _running_a_shard(node) -> bool:
    """Whether a worker process of this Ray node is executing a shard task right now."""
    import psutil
    from ray._private import ray_constants

    raylet = psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
    for child in raylet.children(recursive=True):
        try:
            if "ray::_task" in " ".join(child.cmdline()):
                return True
        except psutil.Error:
            continue
    return False


def test_two_nodes_share_the_shards_silently_with_the_local_bytes(cluster, data, tmp_path):
    cluster_, _ = cluster
    spec, tokenizer, reference = data
    out = tmp_path / "out"
    process = _start(_command(spec, out, tokenizer), cluster_.address)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert "ray: 2 node(s), 2 CPU(s); 2 shard(s) at a time" in stderr
    nodes = re.search(r"shards built per node: \{(.*)\}", stderr).group(1)
    assert len(nodes.split(",")) == 2, stderr  # both nodes built shards
    assert _files(out) == _files(reference)
    noisy = [line for line in stderr.splitlines()
             if re.search(r"warn|deprecat|error|core_worker|streaming|progress bar|MiB", line, re.IGNORECASE)]
    assert not noisy, noisy


def test_s3_records_media_and_output_on_two_nodes_equal_local_disk(cluster, data, s3_store, tmp_path):
    """Spec, records and media in S3, output to S3, on both nodes; the S3 settings come from
    flags only (the nodes' environment has none): they travel with the job, also to the media
    fetches. Byte for byte the local engine's output on local disk."""
    from tests.test_prepare_s3 import local_files, remote_files, upload

    cluster_, _ = cluster
    spec, tokenizer, _ = data
    root = Path(spec).parent
    bucket = s3_store.bucket("cluster")
    upload(root, f"{bucket}/data", s3_store.storage_options)
    s3_spec = f"{bucket}/data/mixture.json"
    reference = tmp_path / "reference"
    prepare(s3_spec, str(reference), str(tokenizer), workers=2, shard_size=2, storage_options=s3_store.storage_options)
    flags = [f"--storage-option={k}={v}" for k, v in s3_store.storage_options.items()]
    process = _start(_command(s3_spec, f"{bucket}/out", tokenizer) + flags, cluster_.address)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    nodes = re.search(r"shards built per node: \{(.*)\}", stderr).group(1)
    assert len(nodes.split(",")) == 2, stderr
    assert remote_files(f"{bucket}/out", s3_store.storage_options) == local_files(reference)


def test_worker_node_lost_then_driver_killed_then_rerun(cluster, data, tmp_path):
    """The worker node dies while building a shard (Ray retries it on the head), then the driver
    is SIGKILLed; the rerun reuses every finished shard and the folder equals the local engine's."""
    cluster_, worker = cluster
    spec, tokenizer, reference = data
    out = tmp_path / "out"
    command = _command(spec, out, tokenizer)
    process = _start(command, cluster_.address)
    try:
        _wait_for_reports(out, 1, process)
        deadline = time.monotonic() + 120
        while not _running_a_shard(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _running_a_shard(worker), "no shard ran on the worker node"
        cluster_.remove_node(worker, allow_graceful=False)  # the node is lost mid-shard
        before = len(list((out / "_reports").glob("*.json")))
        _wait_for_reports(out, before + 2, process)  # the job goes on without it
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    finished = len(list((out / "_reports").glob("*.json")))
    assert not (out / "manifest.json").exists() and finished < 12
    rerun = _start(command, cluster_.address)
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-3000:]
    assert f"reusing {finished} completed shard(s)" in stderr
    assert _files(out) == _files(reference)
