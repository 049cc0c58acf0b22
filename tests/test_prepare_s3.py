"""``prepare`` with object storage end to end on a real S3 store (SeaweedFS on loopback): spec,
record files and media in S3, output to S3; identical bytes to a local-disk output; SIGKILL and
resume with the output in S3; paths that are not understood and runs that reject too much fail
loudly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._datasets import make_mixture, save_tokenizer

pytest.importorskip("pyarrow")

from vlutils import storage  # noqa: E402
from vlutils.data import prepare  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def upload(folder: Path, prefix: str, options: dict) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            storage.write_atomic(storage.join(prefix, str(path.relative_to(folder))), path.read_bytes(),
                                 storage_options=options)


def remote_files(prefix: str, options: dict) -> dict[str, bytes]:
    out = {}
    for folder in (prefix, storage.join(prefix, "_reports")):
        for location in storage.list_dir(folder, storage_options=options):
            out[location[len(prefix) + 1:]] = storage.read_bytes(location, storage_options=options)
    return out


def local_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "_lock"}


@pytest.fixture(scope="module")
def s3_data(s3_store, tmp_path_factory):
    """The test mixture uploaded to S3 (records and relative media), prepared once to local disk."""
    root = tmp_path_factory.mktemp("s3_data")
    make_mixture(root, records=6)
    save_tokenizer(root / "tokenizer.json")
    bucket = s3_store.bucket("prepare")
    upload(root, f"{bucket}/data", s3_store.storage_options)
    spec, tokenizer = f"{bucket}/data/mixture.json", f"{bucket}/data/tokenizer.json"
    reference = root / "reference"
    prepare(spec, str(reference), tokenizer, workers=2, shard_size=4, storage_options=s3_store.storage_options)
    return bucket, spec, tokenizer, reference, root


def test_spec_records_media_and_output_in_s3_equal_local_disk(s3_store, s3_data):
    bucket, spec, tokenizer, reference, root = s3_data
    manifest = prepare(spec, f"{bucket}/out", tokenizer, workers=2, shard_size=4,
                       storage_options=s3_store.storage_options)
    assert manifest["counts"]["samples"] == 18 and manifest["counts"]["bytes_media"] > 0
    assert remote_files(f"{bucket}/out", s3_store.storage_options) == local_files(reference)
    # the media really came from S3: the same spec read from local disk gives the same shards
    local = root / "from_local_spec"
    prepare(str(root / "mixture.json"), str(local), str(root / "tokenizer.json"), workers=2, shard_size=4)
    shards = sorted(p.name for p in reference.glob("*.parquet"))
    assert shards and all((local / n).read_bytes() == (reference / n).read_bytes() for n in shards)
    assert json.loads((local / "_job.json").read_text())["spec_hash"] == manifest["spec_hash"]  # relative paths


def test_sigkill_with_output_in_s3_then_resume(s3_store, s3_data, tmp_path):
    bucket, spec, tokenizer, reference, _ = s3_data
    out = f"{bucket}/killed"
    command = [sys.executable, "-m", "vlutils", "prepare", spec, "--out", out, "--tokenizer", tokenizer,
               "--workers", "1", "--shard-size", "4"]
    env = {**os.environ, **s3_store.env, "PYTHONPATH": str(ROOT)}  # credentials from the AWS_* variables
    process = subprocess.Popen(command + ["--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    reports = storage.join(out, "_reports")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        if len(storage.list_dir(reports, storage_options=s3_store.storage_options)) >= 2:
            break
        time.sleep(0.1)
    assert process.poll() is None, "the job finished before it could be killed"
    # SIGKILL the driver and its workers together: a worker that outlived the driver by a moment could
    # otherwise finish one more shard after the count below, and the rerun would rightly reuse it too.
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    time.sleep(1)
    finished = len(storage.list_dir(reports, storage_options=s3_store.storage_options))
    assert not storage.exists(storage.join(out, "manifest.json"), storage_options=s3_store.storage_options)
    storage.write_atomic(storage.join(out, "part-00004.parquet.tmp-1-dead"), b"half", storage_options=s3_store.storage_options)
    flags = [f"--storage-option={k}={v}" for k, v in s3_store.storage_options.items()]
    clean = {k: v for k, v in env.items() if not k.startswith("AWS_")}  # this time from the flags only
    done = subprocess.run(command + flags, env=clean, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"reusing {finished} completed shard(s)" in done.stderr
    assert remote_files(out, s3_store.storage_options) == local_files(reference)


def test_paths_not_understood_are_errors(s3_data, tmp_path):
    _, spec, tokenizer, _, root = s3_data
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for out in ("s3:/bucket/x", "gs://bucket/x", "s3:///x"):
        run = subprocess.run([sys.executable, "-m", "vlutils", "prepare", str(root / "mixture.json"), "--out", out,
                              "--tokenizer", str(root / "tokenizer.json")], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and out in run.stderr, (out, run.stderr[-1000:])
    assert list(tmp_path.iterdir()) == []  # no ./s3:/bucket/x folder


def test_too_many_rejected_records_exit_non_zero_with_a_summary(s3_store, s3_data, tmp_path):
    """Records naming s3:// media that is not there are all rejected: exit 1 and say why."""
    bucket, _, tokenizer, _, _ = s3_data
    lines = [{"messages": [{"role": "user", "content": [{"type": "image", "image": f"{bucket}/nope/{i}.png"},
                                                        {"type": "text", "text": "hi"}]},
                           {"role": "assistant", "content": "ok"}]} for i in range(4)]
    data = tmp_path / "missing.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    env = {**os.environ, **s3_store.env, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "vlutils", "prepare", str(data), "--out", str(tmp_path / "out"),
                          "--tokenizer", tokenizer, "--model-type", "qwen2_vl", "--workers", "1"],
                         env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "4 of 4 records rejected" in run.stderr and "SourceNotFoundError x4" in run.stderr
    assert (tmp_path / "out" / "rejected.jsonl").read_text().count("\n") == 4
