"""Benchmark vlutils' model-input code against transformers, side by side in one run.

1. ``get_rope_index``: vlutils vs transformers 5.23 (``.refs/tf523``) on a left-padded batch of
   2 x 32k tokens holding 120 images (60 per row), Qwen2-VL layout.
2. patchify: ``vlutils.processor.patchify`` vs transformers' ``Qwen2VLImageProcessor`` (slow,
   the bit-exact reference) and ``Qwen2VLImageProcessorFast`` (venv transformers) on the same
   120 images.

Each implementation runs in its own fresh process (same inputs, same torch thread count, 1 by
default: both are per-request CPU steps on small tensors, and on a shared 2-core machine extra
threads mostly add scheduling noise; ``--threads 2`` to compare), so import costs and memory
do not mix; peak memory is the process's peak RSS above its RSS just
before the timed calls. Results are checked: the positions of valid tokens must equal 5.23's
(images only, where the two semantics agree) and the pixels must equal the slow processor's.

    .venv/bin/python bench/bench_rope.py            # needs scripts/install_refs.sh first
    .venv/bin/python bench/bench_rope.py --repeats 200 --patchify-repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TF523 = ROOT / ".refs" / "tf523"
IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END, PAD = 151655, 151656, 151652, 151653, 151643
ROWS, ROW_TOKENS, IMAGES_PER_ROW = 2, 32768, 60


# --- the workload --------------------------------------------------------------------


def image_grids(seed: int = 0) -> list[tuple[int, int]]:
    """120 image grids (h, w) in 14-px patches, 8..24 merged tokens a side (64..576 tokens)."""
    rng = random.Random(seed)
    return [(2 * rng.randint(8, 24), 2 * rng.randint(8, 24)) for _ in range(ROWS * IMAGES_PER_ROW)]


def rope_inputs(seed: int = 0):
    """Left-padded (2, 32768) prompt: text runs between the image blocks, one row a bit shorter."""
    import torch

    rng = random.Random(seed)
    grids = image_grids(seed)
    ids = torch.full((ROWS, ROW_TOKENS), PAD, dtype=torch.long)
    mask = torch.zeros((ROWS, ROW_TOKENS), dtype=torch.long)
    for row in range(ROWS):
        row_grids = grids[row * IMAGES_PER_ROW : (row + 1) * IMAGES_PER_ROW]
        vision = sum(h * w // 4 + 2 for h, w in row_grids)
        length = ROW_TOKENS - 100 * row  # the second row is left-padded by 100
        text_total = length - vision
        cuts = sorted(rng.randint(0, text_total) for _ in range(IMAGES_PER_ROW))
        runs = [b - a for a, b in zip([0] + cuts, cuts + [text_total])]
        tokens = []
        for run, (h, w) in zip(runs, row_grids):
            tokens += [rng.randrange(0, 150000) for _ in range(run)]
            tokens += [VISION_START] + [IMAGE_PAD] * (h * w // 4) + [VISION_END]
        tokens += [rng.randrange(0, 150000) for _ in range(runs[-1])]
        assert len(tokens) == length
        ids[row, ROW_TOKENS - length :] = torch.tensor(tokens)
        mask[row, ROW_TOKENS - length :] = 1
    image_grid_thw = torch.tensor([[1, h, w] for h, w in grids])
    return ids, mask, image_grid_thw


def images(seed: int = 0):
    """The 120 images, sized to their grids (h*14 x w*14 pixels), random RGB."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, size=(h * 14, w * 14, 3), dtype=np.uint8)) for h, w in image_grids(seed)]


# --- workers (each in its own process) ------------------------------------------------


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    try:  # Linux: "5" resets the peak RSS (VmHWM) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _timed(fn, repeats: int) -> dict:
    result = fn()  # warm-up (and the result that is checked)
    _reset_peak()
    before = _rss_kb("VmRSS")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    peak = max(_rss_kb("VmHWM") - before, 0)
    return {"result": result, "times": times, "peak_mb": peak / 1024}


def _rope_vlutils(repeats: int):
    from vlutils.rope import get_rope_index

    ids, mask, grid = rope_inputs()
    return _timed(lambda: get_rope_index(ids, grid, None, mask), repeats)


def _rope_tf523(repeats: int):
    import functools
    import types

    import torch
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

    ids, mask, grid = rope_inputs()
    vision = types.SimpleNamespace(spatial_merge_size=2, tokens_per_second=2)
    config = types.SimpleNamespace(
        vision_config=vision, image_token_id=IMAGE_PAD, video_token_id=VIDEO_PAD, vision_start_token_id=VISION_START
    )
    me = types.SimpleNamespace(config=config)
    me.get_vision_position_ids = functools.partial(Qwen2VLModel.get_vision_position_ids, me)
    # 5.x takes the modality map from its processor; built outside the timed calls.
    mm_types = torch.zeros_like(ids, dtype=torch.int32)
    mm_types[ids == IMAGE_PAD] = 1
    return _timed(
        lambda: Qwen2VLModel.get_rope_index(me, ids, mm_types, image_grid_thw=grid, attention_mask=mask), repeats
    )


def _patchify_vlutils(repeats: int):
    from vlutils.processor import patchify

    imgs = images()
    return _timed(lambda: patchify(images=imgs, model_type="qwen2_vl")["pixel_values"], repeats)


def _patchify_hf(repeats: int, fast: bool):
    from transformers import Qwen2VLImageProcessor, Qwen2VLImageProcessorFast

    cls = Qwen2VLImageProcessorFast if fast else Qwen2VLImageProcessor
    # A pixel budget that keeps every image at its size (no resize work).
    processor = cls(min_pixels=28 * 28, max_pixels=28 * 28 * 100_000)
    imgs = images()
    return _timed(lambda: processor(images=imgs, return_tensors="pt")["pixel_values"], repeats)


WORKERS = {
    "rope_vlutils": lambda r: _rope_vlutils(r),
    "rope_tf523": lambda r: _rope_tf523(r),
    "patchify_vlutils": lambda r: _patchify_vlutils(r),
    "patchify_hf_slow": lambda r: _patchify_hf(r, fast=False),
    "patchify_hf_fast": lambda r: _patchify_hf(r, fast=True),
}


def run_worker(name: str, repeats: int, out: Path, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)

    timed = WORKERS[name](repeats)
    result = timed.pop("result")
    if isinstance(result, tuple):  # rope: keep positions/deltas for the check
        torch.save(result, out.with_suffix(".pt"))
        timed["shape"] = list(result[0].shape)
    else:  # pixels: a digest is enough to compare bit for bit
        timed["sha256"] = hashlib.sha256(result.contiguous().numpy().tobytes()).hexdigest()
        timed["shape"] = list(result.shape)
    timed["torch_threads"] = torch.get_num_threads()
    out.write_text(json.dumps(timed))


# --- driver --------------------------------------------------------------------------


def launch(name: str, repeats: int, workdir: Path, threads: int) -> dict:
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    if name == "rope_tf523":
        if not (TF523 / "transformers").is_dir():
            sys.exit(f"missing {TF523}: run `bash scripts/install_refs.sh` first")
        env["PYTHONPATH"] = str(TF523)
    out = workdir / f"{name}.json"
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--worker", name, "--repeats", str(repeats),
        "--threads", str(threads), "--out", str(out),
    ]
    subprocess.run(cmd, env=env, cwd=ROOT, check=True)
    return json.loads(out.read_text())


def _summary(label: str, stats: dict) -> str:
    t = stats["times"]
    return (
        f"{label:<34} median {statistics.median(t) * 1e3:9.2f} ms   min {min(t) * 1e3:9.2f} ms   "
        f"peak +{stats['peak_mb']:7.1f} MB   (n={len(t)}, threads={stats['torch_threads']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30, help="timed get_rope_index calls per implementation")
    parser.add_argument("--patchify-repeats", type=int, default=3, help="timed patchify calls per implementation")
    parser.add_argument("--only", choices=["rope", "patchify"], help="run one of the two parts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every worker (default 1)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, args.repeats, args.out, args.threads)
        return

    import torch

    ids, mask, grid = rope_inputs()
    vision_tokens = int((ids == IMAGE_PAD).sum())
    print(f"workload: {ROWS} x {ROW_TOKENS} tokens (left-padded), {grid.shape[0]} images, {vision_tokens} image tokens")
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} torch thread(s) per worker\n")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only != "patchify":
            rope = {name: launch(name, args.repeats, work, args.threads) for name in ("rope_vlutils", "rope_tf523")}
            ours_pos, _ = torch.load(work / "rope_vlutils.pt")
            ref_pos, _ = torch.load(work / "rope_tf523.pt")
            valid = mask.bool()
            same = torch.equal(ours_pos[:, valid], ref_pos[:, valid])
            _print_rope(rope, same)
        if args.only != "rope":
            names = ("patchify_vlutils", "patchify_hf_slow", "patchify_hf_fast")
            _print_patchify({name: launch(name, args.patchify_repeats, work, args.threads) for name in names})


def _print_rope(rope: dict, same: bool) -> None:
    print("get_rope_index")
    print(_summary("  vlutils.rope", rope["rope_vlutils"]))
    print(_summary("  transformers 5.23 Qwen2VLModel", rope["rope_tf523"]))
    ours, ref = rope["rope_vlutils"]["times"], rope["rope_tf523"]["times"]
    print(
        f"  speed-up: {statistics.median(ref) / statistics.median(ours):.1f}x (median), "
        f"{min(ref) / min(ours):.1f}x (min)   valid-token positions identical: {same}\n"
    )


def _print_patchify(pix: dict) -> None:
    print(f"patchify ({pix['patchify_vlutils']['shape'][0]} patches x {pix['patchify_vlutils']['shape'][1]})")
    print(_summary("  vlutils.processor.patchify", pix["patchify_vlutils"]))
    print(_summary("  transformers 4.57 slow processor", pix["patchify_hf_slow"]))
    print(_summary("  transformers 4.57 fast processor", pix["patchify_hf_fast"]))
    med = {k: statistics.median(v["times"]) for k, v in pix.items()}
    print(
        f"  speed-up vs slow: {med['patchify_hf_slow'] / med['patchify_vlutils']:.1f}x, "
        f"vs fast: {med['patchify_hf_fast'] / med['patchify_vlutils']:.1f}x   "
        f"bit-identical to slow: {pix['patchify_vlutils']['sha256'] == pix['patchify_hf_slow']['sha256']}, "
        f"to fast: {pix['patchify_vlutils']['sha256'] == pix['patchify_hf_fast']['sha256']}"
    )


if __name__ == "__main__":
    main()
