"""Dataset preparation and training-time reading, ours vs the usual way, on one ~200-record mix.

    .venv/bin/python bench/bench_prepare.py [--records 200] [--ray]

1. Preparation (records/s): ``vlutils.data.prepare`` (local engine, 2 workers) vs a
   LLaMA-Factory-style pipeline: ``datasets.map(num_proc=2)`` calling qwen-vl-utils'
   ``process_vision_info`` and transformers 4.57.6's ``Qwen2VLProcessor`` per record.
   With ``--ray``: the same job on ``--engine ray`` (a local Ray on this machine).
2. Bytes per sample on disk (images, videos).
3. Reading: ``PreparedDataset`` vs building samples on the fly (``build_sample`` fetching its
   media) in ``DataLoader(num_workers=2)``, on the video samples and on the image samples.

Media and data go to bench/media/prepare/ and bench/out/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

CLIPS = {f"clip{i}.mp4": (640, 360, 10) for i in range(4)}


LONG = "h264_854x480_10min.mp4"


def write_mix(folder: Path, records: int, seed: int = 0, name: str = "mix.jsonl") -> None:
    """The image/video mixture both preparation benchmarks use: ~3/4 image records (1-2 noise
    photos of 1024x768), ~1/4 video records (10 s 640x360 clips), media under ``folder/media``."""
    from PIL import Image

    import bench_video

    rng = random.Random(seed)
    media = folder / "media"
    media.mkdir(parents=True, exist_ok=True)
    for clip, (w, h, s) in CLIPS.items():
        if not (media / clip).exists():
            bench_video.generate(media / clip, w, h, s, {})
    photos = []
    for i in range(24):
        path = media / f"photo{i}.jpg"
        if not path.exists():
            Image.effect_noise((1024, 768), 30 + i).convert("RGB").save(path, quality=85)
        photos.append(path.name)
    lines = []
    for i in range(records):
        if i % 4 == 3:
            lines.append({"messages": [{"role": "user", "content": f"<video>What happens in clip {i}?"},
                                       {"role": "assistant", "content": "Colours move across a test pattern."}],
                          "videos": [rng.choice(sorted(CLIPS))]})
        else:
            n = rng.choice([1, 1, 2])
            lines.append({"messages": [{"role": "user", "content": "<image>" * n + f"Describe picture {i}."},
                                       {"role": "assistant", "content": "Grey noise, nothing else."}],
                          "images": rng.sample(photos, n)})
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in lines))


def make_data(folder: Path, records: int, seed: int = 0, long_records: int = 8) -> Path:
    """Source "mix": ~3/4 image records (1-2 photos of 1024x768), ~1/4 video records (10 s 640x360
    clips). Source "long": ``long_records`` one-minute windows of a 10-minute 854x480 video."""

    import bench_video

    write_mix(folder, records, seed)
    # one-minute windows of the 10-minute video (bench_video.py's file), 1 frame/s
    bench_video.ensure_media(HERE / "media", {LONG})
    long_lines = []
    for k in range(long_records):
        item = {"type": "video", "video": str(HERE / "media" / LONG), "video_start": 60.0 * k,
                "video_end": 60.0 * k + 60.0, "fps": 1.0}
        long_lines.append({"messages": [{"role": "user", "content": [item, {"type": "text", "text": "Summarise."}]},
                                        {"role": "assistant", "content": "A test pattern for a minute."}]})
    (folder / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in long_lines))
    spec = {"model_type": "qwen2_vl", "shard_size": 64, "sources": [
        {"name": "mix", "path": "mix.jsonl", "format": "sharegpt", "media_dir": "media",
         "image": {"max_pixels": 401408}, "video": {"fps": 2.0, "max_pixels": 100352}}]}
    (folder / "spec.json").write_text(json.dumps(spec))
    long_spec = {"model_type": "qwen2_vl", "shard_size": 64, "sources": [
        {"name": "long", "path": "long.jsonl", "format": "messages", "video": {"max_pixels": 100352}}]}
    (folder / "long.json").write_text(json.dumps(long_spec))
    return folder / "spec.json"


# ------------------------------------------------------------------ LLaMA-Factory-style reference
_PROCESSOR = None


def _reference_processor(tokenizer_path: str):
    global _PROCESSOR
    if _PROCESSOR is None:
        from transformers import Qwen2TokenizerFast, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

        tokenizer = Qwen2TokenizerFast(tokenizer_file=tokenizer_path)
        _PROCESSOR = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                                      video_processor=Qwen2VLVideoProcessor())
    return _PROCESSOR


def _reference_map(record: dict, tokenizer_path: str, media: str) -> dict:
    """What a LLaMA-Factory-style preprocess does per record: fetch with qwen-vl-utils, then the processor."""
    import torch
    from qwen_vl_utils import process_vision_info

    from vlutils.data.records import _from_sharegpt
    from vlutils.chat import format_chat

    torch.set_num_threads(1)
    messages = _from_sharegpt({"messages": record["messages"], "images": record["images"] or [],
                               "videos": record["videos"] or []})
    for message in messages:
        for item in message["content"]:
            if "image" in item:
                item.update(image=os.path.join(media, item["image"]), max_pixels=401408)
            if "video" in item:
                item.update(video=os.path.join(media, item["video"]), fps=2.0, max_pixels=100352)
    images, videos = process_vision_info(messages)
    text = format_chat(messages, model_type="qwen2_vl", add_generation_prompt=False)
    out = _reference_processor(tokenizer_path)(text=[text], images=images, videos=videos, return_tensors="pt",
                                               do_resize=False)
    result = {key: None for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")}
    result.update({key: (v[0] if key in ("input_ids", "attention_mask") else v).numpy() for key, v in out.items()})
    return result


def run_reference(data: Path, tokenizer: Path, cache: Path) -> float:
    """The "mix" source only (the reference pipeline has no per-item video windows)."""
    import datasets

    datasets.disable_progress_bars()
    records = [json.loads(line) for line in (data / "mix.jsonl").read_text().splitlines()]
    for r in records:
        r.setdefault("images", None)
        r.setdefault("videos", None)
    shutil.rmtree(cache, ignore_errors=True)
    dataset = datasets.Dataset.from_list(records)
    start = time.perf_counter()
    mapped = dataset.map(_reference_map, fn_kwargs={"tokenizer_path": str(tokenizer), "media": str(data / "media")},
                         num_proc=2, remove_columns=dataset.column_names, cache_file_name=str(cache / "ref.arrow"))
    seconds = time.perf_counter() - start
    assert len(mapped) == len(records)
    return seconds


# ------------------------------------------------------------------ reading
class OnTheFly:
    """Builds each sample from its record at read time (what trainers do without preparation)."""

    def __init__(self, spec_path: str, tokenizer: str, keep):
        from vlutils.data import load_spec
        from vlutils.data.spec import iter_lines

        self.spec = load_spec(spec_path)
        self.tokenizer_path = tokenizer
        self.records = [(l, p, s) for s in self.spec.sources for i, l, p in iter_lines(s) if keep((s.name, i))]
        self.tokenizer = None

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        from tokenizers import Tokenizer

        from vlutils.data import parse_record
        from vlutils.train import build_sample

        if self.tokenizer is None:
            self.tokenizer = Tokenizer.from_file(self.tokenizer_path)
        line, path, source = self.records[i]
        return build_sample(parse_record(line, source, path), self.tokenizer, "qwen2_vl")


def _first(batch):
    return batch[0]


def time_loader(dataset) -> float:
    """Seconds per sample in steady state: timed from the first sample out (worker start-up excluded)."""
    import torch

    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=_first)
    start, count = None, 0
    for _ in loader:
        if start is None:
            start = time.perf_counter()
        else:
            count += 1
    return (time.perf_counter() - start) / max(1, count)


class Subset:
    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--ray", action="store_true", help="also run --engine ray on a local Ray")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--read-only", action="store_true", help="reuse the prepared folders; time reading only")
    args = parser.parse_args()
    from tests._tiny_tokenizer import tiny_qwen_tokenizer
    from vlutils.data import prepare

    data = HERE / "media" / "prepare"
    out = HERE / "out" / "prepare"
    spec = make_data(data, args.records)
    tokenizer = out / "tokenizer.json"
    out.mkdir(parents=True, exist_ok=True)
    if not tokenizer.exists():
        tokenizer.write_text(tiny_qwen_tokenizer().to_str())
    report: dict = {"records": args.records}

    if args.read_only:
        for folder, spec_file in (("local", spec), ("long", data / "long.json")):
            read_report(report, out / folder, spec_file, tokenizer)
        report["load_end"] = os.getloadavg()[0]
        print(json.dumps(report, indent=1))
        return 0
    shutil.rmtree(out / "local", ignore_errors=True)
    start = time.perf_counter()
    manifest = prepare(str(spec), str(out / "local"), str(tokenizer), workers=2)
    report["local_s"] = time.perf_counter() - start
    report["load_after_local"] = os.getloadavg()[0]
    assert manifest["counts"]["rejected"] == 0, manifest["counts"]
    if not args.skip_reference:
        report["reference_s"] = run_reference(data, tokenizer, out / "ref_cache")
        report["load_after_reference"] = os.getloadavg()[0]
    if args.ray:
        shutil.rmtree(out / "ray", ignore_errors=True)
        start = time.perf_counter()
        prepare(str(spec), str(out / "ray"), str(tokenizer), engine="ray")
        report["ray_s"] = time.perf_counter() - start
        same = all((out / "ray" / p.name).read_bytes() == p.read_bytes() for p in (out / "local").iterdir())
        report["ray_identical"] = same

    shutil.rmtree(out / "long", ignore_errors=True)
    start = time.perf_counter()
    prepare(str(data / "long.json"), str(out / "long"), str(tokenizer), workers=2)
    report["long_local_s"] = time.perf_counter() - start
    for folder, spec_file in (("local", spec), ("long", data / "long.json")):
        read_report(report, out / folder, spec_file, tokenizer)
    report["load_end"] = os.getloadavg()[0]
    (HERE / "out" / "prepare.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    if "reference_s" in report:
        print(f"prepare: vlutils local {args.records / report['local_s']:.1f} rec/s, reference "
              f"{args.records / report['reference_s']:.1f} rec/s ({report['reference_s'] / report['local_s']:.2f}x)")
    if "ray_s" in report:
        print(f"ray engine {report['ray_s']:.1f}s vs local {report['local_s']:.1f}s "
              f"({report['ray_s'] / report['local_s']:.2f}x the time), identical: {report['ray_identical']}")
    return 0


def read_report(report: dict, folder: Path, spec: Path, tokenizer: Path) -> None:
    import pyarrow.parquet as pq

    from vlutils.data import PreparedDataset

    dataset = PreparedDataset(str(folder))
    files = sorted(folder.glob("*.parquet"))
    table = pq.read_table([str(f) for f in files], columns=["source", "images", "videos"])
    kinds = {"long_video": [], "short_video": [], "image": []}
    for i, (source, vids) in enumerate(zip(table.column("source").to_pylist(), table.column("videos").to_pylist())):
        kinds["long_video" if source == "long" else "short_video" if vids else "image"].append(i)
    sizes = [f.stat().st_size for f in files]
    for kind, indices in kinds.items():
        if not indices:
            continue
        column = "images" if kind == "image" else "videos"
        raw = sum(len(x["data"]) for i in indices for x in (table.column(column)[i].as_py() or []))
        report[f"{kind}_uint8_bytes_per_sample"] = raw / max(1, len(indices))
        prepared_s = time_loader(Subset(dataset, indices))
        keep = {(dataset.sources[i], dataset.indices[i]) for i in indices}
        fly_s = time_loader(OnTheFly(str(spec), str(tokenizer), lambda key, keep=keep: key in keep))
        report[f"read_{kind}"] = {"samples": len(indices), "prepared_ms_per_sample": 1000 * prepared_s,
                                  "on_the_fly_ms_per_sample": 1000 * fly_s, "speedup": fly_s / prepared_s}
    report[f"{folder.name}_bytes_per_sample"] = sum(sizes) / len(dataset)


if __name__ == "__main__":
    sys.exit(main())
