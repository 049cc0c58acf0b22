"""``python -m vlutils MESSAGES.json``: load every image and video of a messages file and report
sizes, visual tokens and timings per item.

Relative paths in the file are looked up in the current directory first, then next to the
messages file, then in each folder above it (so ``fixtures/demo/messages.json``, whose paths
start at the repository root, works from anywhere). Importing torch and the video decoders
(seconds, more on a busy machine) happens before the first video is timed and is reported
on its own line.

``python -m vlutils prepare SPEC --out DIR ...`` prepares a dataset instead (:mod:`vlutils.data.cli`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
import time
from typing import Any

from .clitext import plain, summary
from .constants import FRAME_FACTOR, SPATIAL_MERGE_SIZE
from .errors import InvalidMessageError, VisionInputError, describe_source
from .families import is_fixed_span, model_types
from .image import image_source, load_image_item
from .messages import VisionItem, item_source, iter_vision_items
from .pool import run_parallel

logger = logging.getLogger("vlutils.cli")

_SOURCE_KEYS = ("image", "image_url", "video", "video_url", "url", "path")


def _rebase_paths(conversations: Any, base_dir: str) -> dict[str, Any]:
    """Point relative paths that do not exist in the CWD at ``base_dir`` or the first folder
    above it that holds them (in place). Returns ``{position: value as written}`` of each
    item changed, so that reports show what the file says."""
    written: dict[str, Any] = {}
    for item in iter_vision_items(conversations):
        for key in _SOURCE_KEYS:
            value = item.element.get(key)
            if isinstance(value, dict) and isinstance(value.get("url"), str):  # {"image_url": {"url": ...}}
                found = _find(value["url"], base_dir)
                if found is not None:
                    written[item.position] = value["url"]
                    item.element[key] = {**value, "url": found}
            elif isinstance(value, str):
                found = _find(value, base_dir)
                if found is not None:
                    written[item.position] = value
                    item.element[key] = found
            elif isinstance(value, list):
                item.element[key] = [_find(v, base_dir) or v if isinstance(v, str) else v for v in value]
    return written


def _find(value: str, base_dir: str) -> str | None:
    """Where a relative path missing from the CWD is: next to the messages file or above it."""
    if not _is_relative_missing(value):
        return None
    folder = base_dir
    while True:
        candidate = os.path.join(folder, value)
        if os.path.exists(candidate):
            return candidate
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _is_relative_missing(value: str) -> bool:
    return "://" not in value and not value.startswith("data:") and not os.path.isabs(value) and not os.path.exists(value)


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return f"<list of {len(value)} frames>"
    return describe_source(value, limit=60)


def _image_report(item: VisionItem, patch: int) -> dict:
    image, (width, height) = load_image_item(item.element, image_patch_size=patch)
    factor = patch * SPATIAL_MERGE_SIZE
    return {
        "kind": "image",
        "source": _describe(image_source(item.element)),
        "original_size": [width, height],
        "resized_size": list(image.size),
        "visual_tokens": (image.size[1] // factor) * (image.size[0] // factor),
    }


def _qwen_vl_image_report(item: VisionItem, image_size: int) -> dict:
    """Qwen-VL: the image opened as the original does, resized to S x S, 256 positions."""
    from .image_qwen_vl import load_qwen_vl_image, resize
    from .tiktoken_qwen import IMG_TOKEN_SPAN

    image = load_qwen_vl_image(item.element)
    original = list(image.size)
    resized = resize(image, image_size)
    return {
        "kind": "image",
        "source": _describe(image_source(item.element)),
        "original_size": original,
        "resized_size": list(resized.size),
        "visual_tokens": IMG_TOKEN_SPAN,
    }


def _video_report(item: VisionItem, patch: int) -> dict:
    from .video import fetch_video

    (video, metadata), sample_fps = fetch_video(
        item.element, image_patch_size=patch, return_video_sample_fps=True, return_video_metadata=True
    )
    frames, _, height, width = video.shape
    factor = patch * SPATIAL_MERGE_SIZE
    value = item_source(item.element, "video")
    info = getattr(metadata, "info", {}) or {}
    original = [info["source_width"], info["source_height"]] if "source_width" in info else None
    return {
        "kind": "video",
        "source": _describe(value),
        "original_size": original,
        "total_frames": metadata.get("total_num_frames"),
        "frames_sampled": int(frames),
        "sample_fps": round(float(sample_fps), 4),
        "backend": metadata.get("video_backend"),
        "resized_size": [int(width), int(height)],
        "visual_tokens": (height // factor) * (width // factor) * (frames // FRAME_FACTOR),
        # frame lists with real times: the given seconds (padded like the frames) and the
        # metadata transformers reads them from (frames_indices / fps)
        **({"timestamps": info["timestamps"], "fps": metadata["fps"], "frames_indices": metadata["frames_indices"]}
           if "timestamps" in info else {}),
    }


def _run_item(item: VisionItem, patch: int, model_type: str | None = None, image_size: int = 448) -> dict:
    start = time.perf_counter()
    try:
        if is_fixed_span(model_type):
            if item.is_video:
                raise InvalidMessageError("Qwen-VL has no video input", item_source(item.element, "video"))
            report = _qwen_vl_image_report(item, image_size)
        else:
            report = _video_report(item, patch) if item.is_video else _image_report(item, patch)
    except VisionInputError as exc:
        exc.with_position(item.position)
        report = {"kind": "error", "source": _describe(exc.source), "error": f"{type(exc).__name__}: {exc}"}
    report["position"] = item.position
    report["seconds"] = round(time.perf_counter() - start, 4)
    return report


def run(path: str, image_patch_size: int = 14, model_type: str | None = None, image_size: int = 448) -> dict:
    """Process a messages file and return the report as a dict. ``model_type="qwen_vl"``:
    images as Qwen-VL sees them (S x S with ``image_size``, 256 positions each).

    ``total["import_seconds"]`` is the time spent importing the video stack (torch, the
    decoders) before the items were timed; 0 when it was already imported or not needed."""
    with open(path, encoding="utf-8") as handle:
        conversations = json.load(handle)
    written = _rebase_paths(conversations, os.path.dirname(os.path.abspath(path)))
    items = iter_vision_items(conversations)
    import_seconds = _import_video_stack() if any(item.is_video for item in items) else 0.0
    start = time.perf_counter()
    reports = run_parallel(lambda item: _run_item(item, image_patch_size, model_type, image_size), items,
                           io_bound=True)
    for report in reports:
        if report["position"] in written and report["kind"] != "error":
            report["source"] = _describe(written[report["position"]])
    total = {
        "items": len(reports),
        "errors": sum(r["kind"] == "error" for r in reports),
        "visual_tokens": sum(r.get("visual_tokens", 0) for r in reports),
        "seconds": round(time.perf_counter() - start, 4),
        "import_seconds": round(import_seconds, 4),
    }
    return {"file": path, "items": reports, "total": total}


def _import_video_stack() -> float:
    """Import what the first video needs (torch, the video pipeline), outside any item's time."""
    start = time.perf_counter()
    import torch  # noqa: F401 - imported for its one-time cost

    from . import video  # noqa: F401
    from .video import pipeline  # noqa: F401

    return time.perf_counter() - start


def _size(value: Any) -> str:
    return f"{value[0]}x{value[1]}" if value else "?"


def _seconds(values: list[float], limit: int = 12) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def format_table(report: dict) -> str:
    lines = [f"{report['file']}: {report['total']['items']} visual item(s)"]
    header = f"{'position':<22} {'kind':<6} {'source':<44} {'original':>11} {'resized':>11} {'frames':>7} {'tokens':>8} {'time':>8}"
    lines += [header, "-" * len(header)]
    for r in report["items"]:
        if r["kind"] == "error":
            lines.append(f"{r['position']:<22} {'ERROR':<6} {r['error']}")
            continue
        frames = f"{r['frames_sampled']}@{r['sample_fps']:g}" if r["kind"] == "video" else "-"
        lines.append(
            f"{r['position']:<22} {r['kind']:<6} {r['source'][:44]:<44} {_size(r['original_size']):>11} "
            f"{_size(r['resized_size']):>11} {frames:>7} {r['visual_tokens']:>8} {r['seconds']:>7.3f}s"
        )
        if r.get("timestamps") is not None:
            lines.append(f"{'':<22} timestamps (s): {_seconds(r['timestamps'])}")
    t = report["total"]
    lines.append(f"total: {t['items']} item(s), {t['errors']} error(s), {t['visual_tokens']} visual tokens, {t['seconds']:.3f}s")
    if t.get("import_seconds"):
        lines.append(f"(before timing: {t['import_seconds']:.3f}s importing torch and the video decoders, once per process)")
    return "\n".join(lines)


_COMMANDS = """commands:
  vlutils MESSAGES.json [--json]     report every image and video of a messages file (this command)
  vlutils prepare SPEC --out DIR ... prepare a dataset into resumable Parquet shards
                                     (python -m vlutils prepare --help)

other command lines of this package:
  python -m vlutils.grounding IMAGE --model-type T --answer TEXT --out OUT.png
                                     draw a model's boxes and points, print them in pixels
  python -m vlutils.video.precompile compile the fast video resize once (after installing)
  python -m vlmodel --model DIR --image PATH --prompt TEXT
                                     chat with a checkpoint (the 'model' extra)

"vlutils" is also "python -m vlutils"."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["prepare"]:  # `python -m vlutils prepare ...`: dataset preparation
        from .data.cli import main as prepare_main

        return prepare_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="vlutils", usage="vlutils [-h] MESSAGES.json [--json] [--image-patch-size N] [--model-type qwen_vl "
                              "[--image-size S]] [-v]\n"
                              "       vlutils prepare SPEC --out DIR --tokenizer TOKENIZER [...]",
        description=textwrap.fill(summary(__doc__) + " " + " ".join(plain(__doc__.split("\n\n")[1]).split()), 90),
        epilog=_COMMANDS, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("messages", metavar="MESSAGES.json",
                        help="JSON file: a list of messages, or a list of conversations")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--image-patch-size", type=int, default=14, help="14 (Qwen2/2.5-VL) or 16 (Qwen3-VL)")
    parser.add_argument("--model-type", choices=[t for t in model_types("inputs") if is_fixed_span(t)], default=None,
                        help="qwen_vl: images as Qwen-VL / Qwen-VL-Chat sees them (S x S, 256 tokens each)")
    parser.add_argument("--image-size", type=int, default=448, help="Qwen-VL's visual.image_size (448)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    try:
        report = run(args.messages, image_patch_size=args.image_patch_size, model_type=args.model_type,
                     image_size=args.image_size)
    except (OSError, json.JSONDecodeError, VisionInputError) as exc:
        print(f"vlutils: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 1 if report["total"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
