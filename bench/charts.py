"""Charts for docs/benchmarks.md from the JSON results the bench scripts write.

    .venv/bin/python bench/charts.py [--results bench/results] [--out docs/images]

Reads every ``*.json`` in ``--results`` and writes one small PNG per result it recognises:

* ``images.json``   from ``bench/bench_images.py --json``: time per case and peak memory, both libraries;
* ``model*.json``   from ``bench/bench_model.py --json``: forward and decoding speed ratios per model;
* ``video*.json``   from ``bench/bench_video.py --json``: seconds per runner and case;
* ``bench_train.json`` from ``bench/bench_train.py``: packed against padded tokens/s and memory;
* ``count_tokens.json`` from ``bench/bench_count_tokens.py``: header counts against fetching.

A file it does not recognise is reported and skipped; nothing is invented: a chart shows only
what its file holds, and its caption names that file.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench.charts")
OURS, REFERENCE = "#2a7ab9", "#b0b0b0"


def _bars(ax, labels: list[str], series: dict[str, list[float]], colours: list[str], fmt: str) -> None:
    """Grouped horizontal bars, one group per label, values written at the bar ends."""
    height = 0.8 / len(series)
    for k, ((name, values), colour) in enumerate(zip(series.items(), colours)):
        ys = [i + (k - (len(series) - 1) / 2) * height for i in range(len(labels))]
        bars = ax.barh(ys, values, height=height, label=name, color=colour)
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=2, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="lower right")
    ax.margins(x=0.18)


def _save(fig, out: Path, source: Path, note: str) -> Path:
    fig.text(0.01, 0.01, f"{note} (from {source.relative_to(ROOT) if source.is_relative_to(ROOT) else source})",
             fontsize=6, color="#555555")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def chart_images(data: dict, source: Path, out_dir: Path) -> Path:
    rows = data["rows"]
    labels = [r["input"] if len(r["input"]) < 40 else r["case"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 0.6 * len(rows) + 1.6))
    _bars(left, labels, {"qwen-vl-utils": [r["wall_ms_reference"] for r in rows],
                         "vlutils": [r["wall_ms_vlutils"] for r in rows]}, [REFERENCE, OURS], "{:.0f}")
    left.set_xlabel("median wall ms per call (lower is better)", fontsize=8)
    if all(r.get("peak_rss_mib_vlutils") is not None for r in rows):
        _bars(right, [""] * len(rows), {"qwen-vl-utils": [r["peak_rss_mib_reference"] for r in rows],
                                        "vlutils": [r["peak_rss_mib_vlutils"] for r in rows]},
              [REFERENCE, OURS], "{:.0f}")
        right.set_xlabel("peak RSS MiB, imports included", fontsize=8)
    else:
        right.axis("off")
    fig.suptitle("Images: vlutils vs qwen-vl-utils 0.0.14", fontsize=10)
    note = f"{data['date']}, {data['machine']}, load {data['load_average_end']:.1f}, {data['reps']} reps"
    return _save(fig, out_dir / "bench-images.png", source, note)


def chart_model(rows: list[dict], source: Path, out_dir: Path) -> Path:
    labels = [f"{r['family']} {r['size']} ({r['params_m']}M)" for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(rows) + 1.4))
    _bars(ax, labels, {"forward": [r["forward_speedup"] for r in rows],
                       "decoding tokens/s": [r["tokens_per_s_ratio"] for r in rows]}, [REFERENCE, OURS], "{:.2f}x")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("vlmodel speed / transformers speed (above 1: vlmodel faster)", fontsize=8)
    fig.suptitle("vlmodel vs transformers, CPU float32", fontsize=10)
    refs = sorted({r.get("reference", "transformers") for r in rows})
    return _save(fig, out_dir / f"bench-{source.stem}.png", source, "reference: " + ", ".join(refs))


def chart_video(results: dict, source: Path, out_dir: Path) -> Path:
    cases = list(results)
    runners = sorted({r for case in cases for r in results[case] if "seconds" in results[case][r]})
    palette = [REFERENCE, OURS, "#7fb3d5", "#555555", "#e59866"][: len(runners)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 0.5 * len(cases) * len(runners) + 1.6))
    _bars(left, cases, {r: [results[c].get(r, {}).get("seconds", 0.0) for c in cases] for r in runners},
          palette, "{:.1f}")
    left.set_xlabel("wall seconds per call (lower is better)", fontsize=8)
    _bars(right, [""] * len(cases), {r: [results[c].get(r, {}).get("cpu_s", 0.0) for c in cases] for r in runners},
          palette, "{:.1f}")
    right.set_xlabel("CPU seconds per call", fontsize=8)
    fig.suptitle("Video: vlutils vs qwen-vl-utils (decord)", fontsize=10)
    loads = [results[c][r].get("load") for c in cases for r in runners if results[c][r].get("load") is not None]
    note = "fastest round per runner" + (f", load {min(loads):.0f}-{max(loads):.0f}" if loads else "")
    return _save(fig, out_dir / f"bench-{source.stem}.png", source, note)


def chart_train(data: dict, source: Path, out_dir: Path) -> Path:
    summary = data["summary"]
    layouts = [name for name in ("packed", "padded") if name in summary]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 2.2))
    _bars(left, layouts, {"real tokens / s": [summary[n]["tokens_per_s"] for n in layouts]}, [OURS], "{:.0f}")
    _bars(right, [""] * len(layouts), {"peak MiB": [summary[n]["peak_mib"] for n in layouts]}, [REFERENCE], "{:.0f}")
    fig.suptitle("Training step: packed vs padded batch (vlmodel, CPU)", fontsize=10)
    return _save(fig, out_dir / "bench-train.png", source, f"load {data['load'][0]:.1f}")


def chart_count_tokens(data: dict, source: Path, out_dir: Path) -> Path:
    rows = data["rows"]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.4))
    _bars(ax, [r["case"][:48] for r in rows], {"fetching": [r["fetch_ms"] for r in rows],
                                               "count_tokens": [r["count_ms"] for r in rows]},
          [REFERENCE, OURS], "{:.1f}")
    ax.set_xscale("log")
    ax.set_xlabel("ms (log scale)", fontsize=8)
    fig.suptitle("Token counts from headers vs fetching", fontsize=10)
    return _save(fig, out_dir / "bench-count-tokens.png", source, f"load {data['load']:.1f}")


def recognise(path: Path, data) -> Callable | None:
    """The chart function for one result file, by its name and shape."""
    if isinstance(data, dict) and data.get("benchmark") == "images":
        return chart_images
    if path.stem.startswith("model") and isinstance(data, list) and data and "forward_speedup" in data[0]:
        return chart_model
    if path.stem.startswith("video") and isinstance(data, dict):
        return chart_video
    if path.stem == "bench_train" and isinstance(data, dict) and "summary" in data:
        return chart_train
    if path.stem == "count_tokens" and isinstance(data, dict) and "rows" in data:
        return chart_count_tokens
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    made = 0
    for path in sorted(args.results.resolve().glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        chart = recognise(path, data)
        if chart is None:
            logger.warning("%s: not a result bench/charts.py knows; skipped", path)
            continue
        logger.info("%s -> %s", path.name, chart(data, path, args.out.resolve()).relative_to(ROOT))
        made += 1
    if not made:
        logger.warning("no chart made: no known result in %s", args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
