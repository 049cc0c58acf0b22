"""``python -m vlutils.grounding IMAGE --model-type T --answer TEXT --out out.png``: draw a
model's boxes and points on the image it was asked about, and print them in image pixels.

The image is loaded as vlutils feeds it (EXIF orientation applied). For ``qwen2_5_vl`` the
resized size the model saw is computed with ``--min-pixels`` / ``--max-pixels`` /
``--image-patch-size`` exactly as ``process_vision_info`` does (same defaults), or given with
``--resized-size WxH`` (e.g. from ``image_grid_thw``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..clitext import plain
from ..errors import VisionInputError
from ..image import open_image
from .conventions import MODEL_TYPES, get_convention, to_image
from .drawing import draw
from .parsing import parse
from .sizes import model_input_size


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return width, height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlutils.grounding", description=plain(__doc__))
    parser.add_argument("image", help="the image the model saw: path, URL, data URI")
    parser.add_argument("--model-type", required=True, help=", ".join(MODEL_TYPES))
    answer = parser.add_mutually_exclusive_group(required=True)
    answer.add_argument("--answer", help="the model's answer text")
    answer.add_argument("--answer-file", help="a file holding the answer ('-' for stdin)")
    parser.add_argument("--out", required=True, help="where to write the picture (format from the extension)")
    parser.add_argument("--min-pixels", type=float, help="qwen2_5_vl: min_pixels of the image item")
    parser.add_argument("--max-pixels", type=float, help="qwen2_5_vl: max_pixels of the image item")
    parser.add_argument("--image-patch-size", type=int, default=14, help="qwen2_5_vl: 14 (default)")
    parser.add_argument("--resized-size", type=_size, help="qwen2_5_vl: WxH the model saw (overrides the above)")
    parser.add_argument("--font", help="TrueType font for the labels (needed for non-Latin labels)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        conv = get_convention(args.model_type)
        if args.answer is not None:
            text = args.answer
        elif args.answer_file == "-":
            text = sys.stdin.read()
        else:
            with open(args.answer_file, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        image = open_image(args.image)
        resized = None
        if conv.scale is None:
            resized = args.resized_size or model_input_size(
                image.size, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                image_patch_size=args.image_patch_size,
            )
        objects = to_image(parse(text, conv.model_type), conv.model_type, image.size, resized)
        draw(image, objects, font=args.font).save(args.out)
    except (OSError, ValueError, VisionInputError) as exc:
        print(f"vlutils.grounding: {exc}", file=sys.stderr)
        return 2
    report = {"image_size": list(image.size), "resized_size": list(resized) if resized else None, "objects": objects}
    print(json.dumps(report, ensure_ascii=False))
    if not objects:
        print("vlutils.grounding: no boxes or points found in the answer", file=sys.stderr)
    return 0
