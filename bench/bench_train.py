"""vlmodel training step on packed rows vs the same samples right-padded, and pack's fill ratio.

    .venv/bin/python bench/bench_train.py                 # CPU float32, 8 mixed samples
    .venv/bin/python bench/bench_train.py --layers 12 --device cuda

Samples are real: generated JPEG images of varied sizes and H.264 videos (written once to
bench/media/train/), fetched and decoded by vlutils, turned into training samples by
``build_sample``, collated by ``collate(packed=True)`` (one row, ``cu_seqlens``) or
``collate(packed=False)`` (right-padded rows). The model is a random checkpoint written by
transformers' ``save_pretrained`` (the ~100M "base" shape of tests/_tiny_checkpoints.py with
``--layers`` decoder and vision layers). Each layout runs in its own child process (load,
one warm-up step, ``--repeats`` timed steps of forward + backward + AdamW), children
alternate for ``--rounds`` rounds; the best median per layout is reported. Memory: the
child's peak RSS minus its RSS just before the first step (CPU), or the peak CUDA allocation.
Tokens/s counts real tokens (padding excluded) in both layouts; it is given per wall second and
per CPU second of the child (the latter is steadier on a machine shared with other jobs).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

OUT = os.path.join(ROOT, "bench", "out")
MEDIA = os.path.join(ROOT, "bench", "media", "train")
WORDS = "the a cat dog sits on mat video image shows red blue green quickly slowly there is and of to".split()


def make_media() -> tuple[list[str], list[str]]:
    """JPEG images of varied sizes and two short H.264 videos (made once)."""
    from PIL import Image

    os.makedirs(MEDIA, exist_ok=True)
    rng = np.random.default_rng(0)
    images = []
    for i, (w, h) in enumerate([(320, 240), (640, 480), (1024, 768), (480, 640), (800, 600), (1280, 720)]):
        path = os.path.join(MEDIA, f"img_{w}x{h}.jpg")
        if not os.path.exists(path):
            y, x = np.mgrid[0:h, 0:w]
            pixels = np.stack([(x * 255 // w), (y * 255 // h), ((x + y + 40 * i) % 256)], -1).astype(np.uint8)
            pixels = np.clip(pixels + rng.integers(0, 40, pixels.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(path, quality=90)
        images.append(path)
    videos = []
    for w, h, seconds in ((320, 240, 6), (480, 272, 4)):
        path = os.path.join(MEDIA, f"video_{w}x{h}_{seconds}s.mp4")
        if not os.path.exists(path):
            _write_video(path, w, h, seconds)
        videos.append(path)
    return images, videos


def _write_video(path: str, w: int, h: int, seconds: int, fps: int = 10) -> None:
    import av

    with av.open(path, "w") as container:
        stream = container.add_stream("h264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        y, x = np.mgrid[0:h, 0:w]
        for t in range(seconds * fps):
            frame = np.stack([(x + 4 * t) % 256, (y + 2 * t) % 256, np.full_like(x, (8 * t) % 256)], -1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def conversations(images: list[str], videos: list[str], n: int) -> list[list[dict]]:
    """Mixed chats: short and long text-only, one or two images, a video, several turns."""
    rng = random.Random(0)

    def text(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    out = []
    for i in range(n):
        kind = i % 6
        user = [{"type": "text", "text": text(rng.randint(5, 40))}]
        if kind in (1, 4):
            user.insert(0, {"type": "image", "image": images[i % len(images)], "max_pixels": 256 * 28 * 28})
        if kind == 2:
            user[:0] = [{"type": "image", "image": p, "max_pixels": 128 * 28 * 28} for p in rng.sample(images, 2)]
        if kind == 5:
            user.insert(0, {"type": "video", "video": videos[i % len(videos)], "fps": 1.0, "max_pixels": 64 * 28 * 28,
                                "min_pixels": 32 * 28 * 28})
        chat = [{"role": "user", "content": user}, {"role": "assistant", "content": text(rng.randint(10, 120))}]
        if kind in (0, 3):  # text-only, several turns
            for _ in range(rng.randint(1, 4 if kind == 3 else 1)):
                chat += [{"role": "user", "content": text(rng.randint(5, 30))},
                         {"role": "assistant", "content": text(rng.randint(20, 200))}]
        out.append(chat)
    return out


def build(args) -> tuple[str, str]:
    from _tiny_checkpoints import hf_config
    from _tiny_tokenizer import SMALL_SPECIAL, tiny_qwen_tokenizer
    from transformers import Qwen2VLForConditionalGeneration

    from vlutils.train import build_sample

    os.makedirs(OUT, exist_ok=True)
    images, videos = make_media()
    tok = tiny_qwen_tokenizer(SMALL_SPECIAL)
    samples = [build_sample(c, tok, "qwen2_vl") for c in conversations(images, videos, args.samples)]
    samples_path = os.path.join(OUT, "train_samples.pt")
    torch.save(samples, samples_path)
    cfg = hf_config("qwen2_vl", size="base", init=0.02)
    cfg.text_config.num_hidden_layers = args.layers
    if getattr(cfg.text_config, "layer_types", None):  # one entry per layer
        cfg.text_config.layer_types = cfg.text_config.layer_types[: args.layers]
    cfg.vision_config.depth = args.vision_layers
    torch.manual_seed(0)
    ckpt = os.path.join(OUT, f"train_ckpt_{args.layers}_{args.vision_layers}")
    Qwen2VLForConditionalGeneration._from_config(cfg).save_pretrained(ckpt)
    return samples_path, ckpt


def child(args) -> None:
    """One layout: load, warm up, time ``repeats`` training steps; print a JSON line."""
    import vlmodel
    from vlutils.train import collate

    torch.set_num_threads(args.threads or torch.get_num_threads())
    samples = torch.load(args.samples_path, weights_only=False)
    model = vlmodel.from_pretrained(args.ckpt, dtype=torch.float32, device=args.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = collate(samples, packed=args.child == "packed")
    batch = {k: v.to(args.device) for k, v in batch.items()}
    real_tokens = sum(s["num_tokens"] for s in samples)

    def step():
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return loss.item()

    rss_before = _rss_mib()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    loss = step()  # warm-up (also allocates the optimizer state)
    times, cpu = [], []
    for _ in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda")
            else _peak_rss_mib() - rss_before)
    print(json.dumps({"layout": args.child, "times": times, "cpu": cpu, "tokens": real_tokens,
                      "row_tokens": int(batch["input_ids"].numel()), "peak_mib": peak, "loss": loss}))


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fill_ratio_table(seed: int = 0, n: int = 20000) -> list[dict]:
    """pack on a realistic size distribution: bins vs the lower bound, fill of each budget."""
    from test_train_pack import realistic_sizes

    from vlutils.train import pack

    sizes = realistic_sizes(seed, n)
    rows = []
    for max_tokens, max_patches in ((16384, None), (16384, 65536), (16384, 40000), (32768, 98304)):
        start = time.perf_counter()
        bins = pack(sizes, max_tokens, max_patches)
        rows.append({"samples": n, "max_tokens": max_tokens, "max_patches": max_patches, "bins": len(bins),
                     "lower_bound": bins.lower_bound, "over_bound": len(bins) / bins.lower_bound - 1,
                     "fill_tokens": bins.fill_tokens, "fill_patches": bins.fill_patches, "method": bins.method,
                     "seconds": time.perf_counter() - start})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--layers", type=int, default=2, help="decoder layers")
    parser.add_argument("--vision-layers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", choices=["packed", "padded"])
    parser.add_argument("--samples-path")
    parser.add_argument("--ckpt")
    args = parser.parse_args()
    if args.child:
        return child(args)

    samples_path, ckpt = build(args)
    samples = torch.load(samples_path, weights_only=False)
    lengths = [s["num_tokens"] for s in samples]
    print(f"{len(samples)} samples, tokens {min(lengths)}..{max(lengths)} (sum {sum(lengths)}; padded "
          f"{len(lengths) * max(lengths)}), patches {sum(s['num_patches'] for s in samples)}; load {os.getloadavg()[0]:.1f}")
    results: dict[str, list[dict]] = {"packed": [], "padded": []}
    env = dict(os.environ, PYTHONPATH=ROOT)
    for _ in range(args.rounds):
        for layout in ("packed", "padded"):
            cmd = [sys.executable, __file__, "--child", layout, "--samples-path", samples_path, "--ckpt", ckpt,
                   "--repeats", str(args.repeats), "--device", args.device, "--threads", str(args.threads)]
            line = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results[layout].append(json.loads(line))
    summary = {}
    for layout, runs in results.items():
        best = min(runs, key=lambda r: statistics.median(r["times"]))
        step = statistics.median(best["times"])
        cpu = min(statistics.median(r["cpu"]) for r in runs)
        summary[layout] = {"step_s": step, "tokens_per_s": best["tokens"] / step, "row_tokens": best["row_tokens"],
                           "cpu_s": cpu, "tokens_per_cpu_s": best["tokens"] / cpu,
                           "peak_mib": min(r["peak_mib"] for r in runs), "loss": best["loss"]}
    print("| layout | tokens in the batch (incl. padding) | step s (wall) | real tokens/s | step CPU s | real tokens/CPU s | peak MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for layout, s in summary.items():
        print(f"| {layout} | {s['row_tokens']} | {s['step_s']:.2f} | {s['tokens_per_s']:.0f} | {s['cpu_s']:.2f} | "
              f"{s['tokens_per_cpu_s']:.0f} | {s['peak_mib']:.0f} |")
    ratio = summary["packed"]["tokens_per_s"] / summary["padded"]["tokens_per_s"]
    cpu_ratio = summary["packed"]["tokens_per_cpu_s"] / summary["padded"]["tokens_per_cpu_s"]
    memory = summary["packed"]["peak_mib"] / summary["padded"]["peak_mib"]
    print(f"packed / padded: {ratio:.2f}x tokens/s (wall), {cpu_ratio:.2f}x per CPU second, {memory:.2f}x peak memory; "
          f"losses {summary['packed']['loss']:.5f} / {summary['padded']['loss']:.5f}; load {os.getloadavg()[0]:.1f}")
    fill = fill_ratio_table()
    print("| samples | max_tokens | max_patches | bins | lower bound | over bound | fill tokens | fill patches | s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in fill:
        patches = "-" if r["fill_patches"] is None else f"{r['fill_patches']:.3f}"
        print(f"| {r['samples']} | {r['max_tokens']} | {r['max_patches'] or '-'} | {r['bins']} | {r['lower_bound']} | "
              f"{100 * r['over_bound']:.1f}% | {r['fill_tokens']:.3f} | {patches} | {r['seconds']:.1f} |")
    with open(os.path.join(OUT, "bench_train.json"), "w") as fh:
        json.dump({"runs": results, "summary": summary, "ratio": ratio, "cpu_ratio": cpu_ratio, "memory_ratio": memory, "fill": fill,
                   "load": os.getloadavg()}, fh, indent=1)


if __name__ == "__main__":
    main()
