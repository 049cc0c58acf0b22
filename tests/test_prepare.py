"""Dataset preparation end to end on a real mixed dataset (three formats, per-source settings,
bad records): items bit-identical to ``build_sample`` on the raw records, exact rejections,
identical bytes whatever the worker count, SIGKILL + resume, Parquet readable by pyarrow and
datasets, PreparedDataset in DataLoader workers, count_tokens equal to the samples."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests._datasets import make_mixture, save_tokenizer

pytest.importorskip("pyarrow")

from vlutils import count_tokens  # noqa: E402
from vlutils.data import PreparedDataset, load_spec, parse_record, prepare  # noqa: E402
from vlutils.data.spec import iter_lines  # noqa: E402
from vlutils.train import build_sample  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Derived from how tests/_datasets.py inserts its bad lines (6 good records per source).
EXPECTED_REJECTED = [
    ("docs", 2, "InvalidRecordError"),      # "{not json"
    ("docs", 5, "SourceNotFoundError"),     # media/missing.png
    ("docs", 8, "DecodeError"),             # media/corrupt.jpg (6 records + 2 inserted lines)
    ("docs", 9, "SampleTooLongError"),      # 3000 words > max_length 2048, truncation "drop"
    ("clips", 1, "InvalidRecordError"),     # two <video> tags, one video
    ("llava", 1, "InvalidRecordError"),     # an image but no <image> tag
]


@pytest.fixture(scope="session")
def mixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture")
    spec = make_mixture(root, records=6)
    tokenizer = save_tokenizer(root / "tokenizer.json")
    out = root / "out_two_workers"
    prepare(str(spec), str(out), str(tokenizer), workers=2, shard_size=4)
    return root, spec, tokenizer, out


def _files(folder: Path) -> dict[str, bytes]:
    """Every output file (reports included) by relative path; the lock file is not output."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "_lock"}


def _raw_records(spec_path):
    spec = load_spec(str(spec_path))
    for source in spec.sources:
        for index, line, path in iter_lines(source):
            yield source, index, line, path


def test_rejected_records_are_exact(mixture):
    _, _, _, out = mixture
    lines = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [(r["source"], r["index"], r["error"]) for r in lines] == EXPECTED_REJECTED
    assert all(r["message"] for r in lines)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["rejected"] == len(EXPECTED_REJECTED)
    assert manifest["counts"]["samples"] == 18
    assert manifest["counts"]["per_source"] == {"docs": {"samples": 6, "rejected": 4},
                                                "clips": {"samples": 6, "rejected": 1},
                                                "llava": {"samples": 6, "rejected": 1}}
    assert len(manifest["spec_hash"]) == 64 and manifest["vlutils_version"]
    assert sum(manifest["histograms"]["num_tokens"].values()) == 18


def test_items_bit_identical_to_build_sample_on_raw_records(mixture):
    """Each item equals build_sample run on the raw record (fetching its own media)."""
    _, spec_path, tokenizer_path, out = mixture
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    dataset = PreparedDataset(str(out))
    rejected = {(s, i) for s, i, _ in EXPECTED_REJECTED}
    expected_keys = []
    for source, index, line, path in _raw_records(spec_path):
        if (source.name, index) not in rejected:
            expected_keys.append((source.name, index, line, path, source))
    names = [dataset.source_names[s] for s in dataset.sources]
    assert [(s, i) for s, i, *_ in expected_keys] == list(zip(names, dataset.indices))
    for position, (name, index, line, path, source) in enumerate(expected_keys):
        item = dataset[position]
        want = build_sample(parse_record(line, source, path), tokenizer, "qwen2_5_vl", max_length=2048, truncation="drop")
        assert (item.pop("source"), item.pop("index")) == (name, index)
        assert set(item) == set(want)
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert item[key].dtype == value.dtype and torch.equal(item[key], value), (name, index, key)
            else:
                assert item[key] == value, (name, index, key)
        assert dataset.sizes[position] == (want["num_tokens"], want["num_patches"])
        grids = [g for g in (want["image_grid_thw"], want["video_grid_thw"]) if g is not None]
        counted = count_tokens(parse_record(line, source, path), model_type="qwen2_5_vl")
        assert sorted(tuple(e["grid_thw"]) for e in counted) == sorted(tuple(g) for grid in grids for g in grid.tolist())


def test_sigkill_then_resume_gives_the_same_bytes_as_two_workers(mixture, tmp_path):
    """One worker, killed with SIGKILL after its second shard, then rerun: same files, byte for
    byte, and the rerun reuses the finished shards (its log says how many)."""
    _, spec, tokenizer, out = mixture
    target = tmp_path / "out"
    command = [sys.executable, "-m", "vlutils", "prepare", str(spec), "--out", str(target), "--tokenizer",
               str(tokenizer), "--workers", "1", "--shard-size", "4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command + ["--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reports = target / "_reports"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if reports.exists() and len(list(reports.glob("*.json"))) >= 2:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the job finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (target / "manifest.json").exists()
    finished = sorted(p.stem for p in reports.glob("*.json"))
    kept = {p.name: p.stat().st_mtime_ns for p in target.glob("part-*.parquet") if p.stem in finished}
    (target / "part-00005.parquet.tmp-deadbeef").write_bytes(b"half a shard")  # as if killed mid-write
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"reusing {len(finished)} completed shard(s)" in done.stderr
    assert {p.name: p.stat().st_mtime_ns for p in target.glob("part-*.parquet") if p.name in kept} == kept
    assert "6 rejected" in done.stderr.splitlines()[-2] and "6 rejected" in done.stderr.splitlines()[-1]
    assert _files(target) == _files(out)


def test_finished_folder_is_reused_and_other_jobs_refused(mixture):
    from vlutils.errors import InvalidSpecError

    _, spec, tokenizer, out = mixture
    before = _files(out)
    assert prepare(str(spec), str(out), str(tokenizer), workers=2, shard_size=4)["counts"]["samples"] == 18
    assert _files(out) == before
    with pytest.raises(InvalidSpecError, match="different preparation job"):
        prepare(str(spec), str(out), str(tokenizer), shard_size=3)


def test_shards_load_with_pyarrow_and_datasets(mixture):
    import pyarrow.parquet as pq

    _, _, _, out = mixture
    files = sorted(str(p) for p in out.glob("*.parquet"))
    table = pq.read_table(files)
    assert table.num_rows == 18
    assert table.column("source").to_pylist()[:6] == ["docs"] * 6
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset("parquet", data_files=files, split="train")
    assert len(loaded) == 18 and loaded[0]["index"] == 0
    assert loaded[0]["input_ids"] == table.column("input_ids").to_pylist()[0]


def _first(batch):
    return batch[0]


def test_dataloader_workers(mixture, context="fork"):
    _, _, _, out = mixture
    dataset = PreparedDataset(str(out))
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=_first,
                                         multiprocessing_context=context)
    items = list(loader)
    names = [dataset.source_names[s] for s in dataset.sources]
    assert [(i["source"], i["index"]) for i in items] == list(zip(names, dataset.indices))
    for position in (0, 7, 17):
        direct = dataset[position]
        for key, value in direct.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(items[position][key], value)


def test_prepared_dataset_packs_with_train(mixture):
    train = pytest.importorskip("vlutils.train")
    if not hasattr(train, "pack") or not hasattr(train, "collate"):
        pytest.skip("vlutils.train.pack/collate not merged yet")
    pack, collate = train.pack, train.collate

    _, _, _, out = mixture
    dataset = PreparedDataset(str(out))
    bins = pack(dataset.sizes, max_tokens=2048, max_patches=8192)
    assert sorted(i for b in bins for i in b) == list(range(len(dataset)))
    batch = collate([dataset[i] for i in bins[0]])
    assert batch["input_ids"].shape[1] == sum(dataset.sizes[i][0] for i in bins[0])
    # the manifest's per-source weights drive the sampler's mixture: round(w * n) samples per source
    spec_weights = {s["name"]: s.get("weight", 1.0) for s in dataset.manifest["spec"]["sources"]}
    assert dataset.source_weights == [spec_weights[name] for name in dataset.source_names]
    assert 0.5 in dataset.source_weights
    sampler = train.BudgetBatchSampler(dataset.sizes, 2048, 8192, sources=dataset.sources,
                                       weights=dataset.source_weights, shuffle=True, world_size=2, rank=1)
    used = [dataset.sources[i] for b in sampler for i in b]
    other = train.BudgetBatchSampler(dataset.sizes, 2048, 8192, sources=dataset.sources,
                                     weights=dataset.source_weights, shuffle=True, world_size=2, rank=0)
    used += [dataset.sources[i] for b in other for i in b]
    for number, weight in enumerate(dataset.source_weights):
        assert used.count(number) == round(weight * int((dataset.sources == number).sum()))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data")  # ray.data.read_parquet below, not prepare
def test_ray_engine_with_a_killed_worker_gives_the_same_bytes(mixture, tmp_path, monkeypatch):
    """--engine ray on a local Ray: one shard task SIGKILLs its worker process mid-job (marker
    file), Ray retries the task; the folder equals the local engine's byte for byte. Then the
    shards are read back with ray.data.read_parquet."""
    ray = pytest.importorskip("ray")
    from vlutils.data.engine_ray import KILL_MARKER_ENV

    _, spec, tokenizer, out = mixture
    marker = tmp_path / "kill-once"
    marker.write_text("")
    monkeypatch.setenv(KILL_MARKER_ENV, str(marker))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    target = tmp_path / "out_ray"
    try:
        prepare(str(spec), str(target), str(tokenizer), engine="ray", shard_size=4)
        assert not marker.exists(), "no worker was killed"
        assert _files(target) == _files(out)
        loaded = ray.data.read_parquet(sorted(str(p) for p in target.glob("*.parquet")))
        assert loaded.count() == 18
        assert sorted(loaded.unique("source")) == ["clips", "docs", "llava"]
    finally:
        ray.shutdown()


def test_task_slots_use_the_whole_cluster():
    from vlutils.data.engine_ray import task_slots

    assert task_slots(2, 1.0) == 2
    assert task_slots(16, 2.0) == 8
    assert task_slots(0.5, 1.0) == 1
    assert task_slots(16, 1.0, workers=3) == 3


def test_shrunk_samples_keep_exact_pixels(mixture):
    """truncation="shrink" re-fetches smaller media inside build_sample: the row then stores the
    raw pixel tensor (detected by the write-time check) and still decodes bit-identically."""
    from dataclasses import replace

    from tokenizers import Tokenizer

    from vlutils.data.build import Job, SampleBuilder
    from vlutils.data.rows import decode_row

    root, spec_path, tokenizer_path, _ = mixture
    spec = replace(load_spec(str(spec_path)), max_length=120, truncation="shrink")
    record = {"messages": [{"role": "user", "content": [{"type": "image", "image": "media/img0.png"},
                                                        {"type": "text", "text": "What?"}]},
                           {"role": "assistant", "content": "Noise."}]}
    line = json.dumps(record)
    result = SampleBuilder(spec, str(tokenizer_path), "qwen2_5_vl")(Job(0, 0, line, str(root / "docs.jsonl")))
    assert result["kind"] == "row", result
    row = result["row"]
    assert json.loads(row["meta"])["pixel_values"][2] == "raw"
    want = build_sample(parse_record(line, spec.sources[0], str(root / "docs.jsonl")),
                        Tokenizer.from_file(str(tokenizer_path)), "qwen2_5_vl", max_length=120, truncation="shrink")
    got = decode_row(row, "qwen2_5_vl")
    assert want["num_tokens"] <= 120
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(got[key], value), key


def test_single_jsonl_spec_detects_each_records_format(mixture, tmp_path):
    """A plain .jsonl spec: one source named after the file, format detected per record, model
    type from the flag (required), relative media next to the file."""
    from vlutils.errors import InvalidSpecError

    root, _, tokenizer, _ = mixture
    records = [
        {"messages": [{"role": "user", "content": [{"type": "image", "image": "media/img1.jpg"}, {"type": "text", "text": "x"}]},
                      {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": "<image>what?"}, {"role": "assistant", "content": "z"}],
         "images": ["media/img2.png"]},
        {"image": "media/img3.jpg", "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "ok"}]},
    ]
    data = root / "single.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(InvalidSpecError, match="model_type"):
        prepare(str(data), str(tmp_path / "nope"), str(tokenizer))
    manifest = prepare(str(data), str(tmp_path / "out"), str(tokenizer), model_type="qwen2_vl", workers=1)
    assert manifest["counts"]["samples"] == 3 and manifest["counts"]["rejected"] == 0
    dataset = PreparedDataset(str(tmp_path / "out"))
    assert dataset.source_names == ["single"] and dataset.sources.tolist() == [0, 0, 0]
    assert dataset.indices == [0, 1, 2]
    assert all(item["image_grid_thw"].shape == (1, 3) for item in (dataset[0], dataset[1], dataset[2]))


def test_a_second_job_on_the_same_folder_is_refused(mixture, tmp_path):
    from vlutils.data.prepare import _exclusive
    from vlutils.errors import InvalidSpecError

    _, spec, tokenizer, _ = mixture
    # the lock is per process: take it in a child, then try from here
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys, time\nfrom vlutils.data.prepare import _exclusive\n"
                              "with _exclusive(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)\n",
                              str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(InvalidSpecError, match="another preparation job"):
            prepare(str(spec), str(tmp_path), str(tokenizer))
    finally:
        child.kill()
        child.wait()
    with _exclusive(str(tmp_path)):  # released when its holder died
        pass


@pytest.mark.parametrize("model_type", ["qwen3_vl", "qwen3_5"])
def test_qwen3_vl_video_samples_bit_identical(mixture, tmp_path, model_type):
    """Qwen3-VL (patch 16, timestamps from the fetched videos' metadata) on the video source;
    Qwen3.5 (refused by prepare before the families registry) adds its own chat template."""
    from dataclasses import replace

    from tokenizers import Tokenizer

    _, spec_path, tokenizer_path, _ = mixture
    full = load_spec(str(spec_path))
    spec = replace(full, sources=(full.sources[1],), model_type=model_type)
    prepare(spec, str(tmp_path / "out"), str(tokenizer_path), workers=1)
    dataset = PreparedDataset(str(tmp_path / "out"))
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    lines = {index: (line, path) for index, line, path in iter_lines(spec.sources[0])}
    assert len(dataset) == 6
    for position in (0, 5):
        item = dataset[position]
        line, path = lines[item["index"]]
        want = build_sample(parse_record(line, spec.sources[0], path), tokenizer, model_type, max_length=2048,
                            truncation="drop")
        assert want["video_grid_thw"] is not None
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(item[key], value), key


def test_a_killed_local_worker_fails_clearly_and_the_rerun_resumes(mixture, tmp_path):
    """SIGKILL of one worker process of the local engine: the job stops with a clear message (exit
    3), finished shards stay, and the rerun finishes with the bytes of an uninterrupted run."""
    import psutil

    _, spec, tokenizer, out = mixture
    target = tmp_path / "out"
    command = [sys.executable, "-m", "vlutils", "prepare", str(spec), "--out", str(target), "--tokenizer",
               str(tokenizer), "--workers", "2", "--shard-size", "4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if len(list((target / "_reports").glob("*.json"))) >= 1:
            break
        time.sleep(0.02)
    workers = psutil.Process(process.pid).children()
    assert workers and process.poll() is None, "the job finished before a worker could be killed"
    workers[0].send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the killed worker had no shard left to build")
    assert process.returncode == 3 and "rerun the same command" in stderr, stderr[-2000:]
    assert not (target / "manifest.json").exists()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _files(target) == _files(out)
