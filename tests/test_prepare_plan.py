"""The shard plan and spec checks, fast: shard k holds exactly records [k*S, (k+1)*S) of the record
order for any shard size (blank lines, files without a final newline, globs over several files,
several sources), the plan streams in constant memory, vision settings that cannot work fail when
the spec is loaded, every model type build_sample takes is accepted, and a half-done job moved to
another folder resumes there."""

from __future__ import annotations

import json
import random
import shutil
import tracemalloc
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")

from vlutils.data.plan import iter_plan, read_jobs  # noqa: E402
from vlutils.data.prepare import resolve_spec  # noqa: E402
from vlutils.data.spec import load_spec  # noqa: E402
from vlutils.errors import InvalidSpecError  # noqa: E402


def _write_sources(root: Path, rng: random.Random) -> list[tuple[str, int, bytes]]:
    """Two sources (one of three files via a glob), random blank lines, a file without a final
    newline, CR characters inside lines; returns the expected records ``(source, index, line)``
    derived by splitting the files on newlines here, independently of the code under test."""
    expected = []
    sources = {"a": ["a-0.jsonl", "a-1.jsonl", "a-2.jsonl"], "b": ["b.jsonl"]}
    for name, files in sources.items():
        index = 0
        for file in files:
            lines = []
            for _ in range(rng.randrange(0, 9)):
                lines.append("" if rng.random() < 0.25 else json.dumps({"n": rng.random(), "t": "x\ry"}))
            text = "\n".join(lines) + ("\n" if rng.random() < 0.7 else "")
            (root / file).write_text(text, newline="")
            in_file = text.split("\n")
            if in_file[-1] == "":  # a final newline ends the last line; it does not start another
                in_file.pop()
            for line in in_file:
                if line.strip():
                    expected.append((name, index, line.encode()))
                index += 1
    (root / "mix.json").write_text(json.dumps({"model_type": "qwen2_vl", "sources": [
        {"name": "a", "path": "a-*.jsonl"}, {"name": "b", "path": "b.jsonl"}]}))
    return expected


@pytest.mark.parametrize("seed", range(6))
def test_shard_k_holds_records_k_times_s_to_k_plus_one_times_s(tmp_path, seed):
    rng = random.Random(seed)
    expected = _write_sources(tmp_path, rng)
    spec = load_spec(str(tmp_path / "mix.json"))
    names = [s.name for s in spec.sources]
    for size in (1, 2, 3, 5, 7, 1000):
        plans = list(iter_plan(spec, size))
        assert [p.number for p in plans] == list(range(len(plans)))
        assert len(plans) == -(-len(expected) // size)
        for plan in plans:
            got = [(names[j.source], j.index, j.line.rstrip(b"\n")) for j in read_jobs(plan)]
            assert got == expected[plan.number * size:(plan.number + 1) * size], (size, plan)
            assert plan.records == len(got)


def test_the_plan_streams_in_constant_memory(tmp_path):
    line = json.dumps({"messages": [{"role": "user", "content": "x" * 200}]}) + "\n"
    (tmp_path / "big.jsonl").write_text(line * 100_000)
    spec = load_spec(str(tmp_path / "big.jsonl"))
    tracemalloc.start()
    count = sum(plan.records for plan in iter_plan(spec, 1000))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 100_000
    assert peak < 8 << 20, peak  # one 1 MiB read chunk and its lines, never the 22 MB of records


def _spec(tmp_path: Path, image=None, video=None, model_type="qwen2_5_vl") -> str:
    (tmp_path / "r.jsonl").write_text("{}\n")
    source = {"path": "r.jsonl", **({"image": image} if image else {}), **({"video": video} if video else {})}
    (tmp_path / "s.json").write_text(json.dumps({"model_type": model_type, "sources": [source]}))
    return str(tmp_path / "s.json")


@pytest.mark.parametrize("image, video, match", [
    (None, {"max_pixels": 65536}, "below the model's default min_pixels"),  # LLaMA-Factory's video default
    ({"min_pixels": 200000, "max_pixels": 100000}, None, r"max_pixels \(100000\) is below min_pixels"),
    (None, {"min_frames": 8, "max_frames": 4}, "min_frames"),
    (None, {"fps": 1, "nframes": 4}, "fps or nframes"),
    (None, {"fps": -1}, "must be > 0"),
    ({"resized_height": 224}, None, "together"),
    (None, {"video_start": 5, "video_end": 2}, "before"),
    ({"max_pixels": "big"}, None, "finite number"),
])
def test_vision_settings_that_cannot_work_fail_when_the_spec_is_loaded(tmp_path, image, video, match):
    with pytest.raises(InvalidSpecError, match=match):
        resolve_spec(_spec(tmp_path, image, video))


def test_sound_vision_settings_pass(tmp_path):
    spec = resolve_spec(_spec(tmp_path, {"min_pixels": 3136, "max_pixels": 401408},
                              {"fps": 2.0, "max_pixels": 200704, "min_frames": 4, "max_frames": 64}))
    assert spec.sources[0].video["max_pixels"] == 200704


def test_every_model_type_build_sample_takes_is_accepted(tmp_path):
    from vlutils.families import model_types

    assert {"qwen3_5", "qwen3_5_moe", "qwen3_vl_moe"} <= set(model_types("train"))
    for model_type in model_types("train"):
        assert resolve_spec(_spec(tmp_path, model_type=model_type)).model_type == model_type
    with pytest.raises(InvalidSpecError, match="model"):
        resolve_spec(_spec(tmp_path, model_type="llava"))


def test_a_half_done_job_moved_elsewhere_resumes_there(tmp_path):
    """Manifest and job file hold relative paths: data + output copied to another folder resume
    (reusing the finished shards) and finish with the same bytes."""
    from tests._datasets import make_mixture, save_tokenizer
    from vlutils.data.prepare import prepare

    first = tmp_path / "first"
    first.mkdir()
    spec = make_mixture(first, records=2, videos=False)
    tokenizer = save_tokenizer(first / "tokenizer.json")
    prepare(str(spec), str(first / "out"), str(tokenizer), workers=1, shard_size=2, max_rejected=None)
    complete = {p.name: p.read_bytes() for p in sorted((first / "out").rglob("*")) if p.is_file() and p.name != "_lock"}
    for name in ("manifest.json", "rejected.jsonl", "part-00002.parquet", "_reports/part-00002.json"):
        (first / "out" / name).unlink(missing_ok=True)
    second = tmp_path / "second"
    shutil.copytree(first, second)
    shutil.rmtree(first)
    manifest = prepare(str(second / "mixture.json"), str(second / "out"), str(second / "tokenizer.json"),
                       workers=1, shard_size=2, max_rejected=None)
    assert manifest["counts"]["records"] > 0
    again = {p.name: p.read_bytes() for p in sorted((second / "out").rglob("*")) if p.is_file() and p.name != "_lock"}
    assert again == complete
