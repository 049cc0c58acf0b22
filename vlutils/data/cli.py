"""``python -m vlutils prepare SPEC --out DIR --tokenizer TOKENIZER --model-type TYPE``."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import InvalidSpecError, VisionInputError
from ..families import model_types


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vlutils prepare",
        description="Prepare a dataset (JSONL file or mixture config) into resumable Parquet shards.")
    parser.add_argument("spec", help="a .jsonl dataset, or a mixture config (.json / .yaml)")
    parser.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    parser.add_argument("--tokenizer", required=True,
                        help="a tokenizer.json or qwen.tiktoken (Qwen-VL) file, or a checkpoint folder holding one")
    parser.add_argument("--model-type", choices=model_types("prepare"), help="overrides the spec")
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    parser.add_argument("--workers", type=int, help="worker processes (local) or actors (ray); default: by CPUs")
    parser.add_argument("--shard-size", type=int, help="samples per shard (default 1000)")
    parser.add_argument("--max-length", type=int, help="overrides the spec")
    parser.add_argument("--truncation", choices=("error", "drop", "shrink"), help="overrides the spec")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(message)s")
    if not args.quiet:  # progress lines, not every fetched video
        logging.getLogger("vlutils.data").setLevel(logging.INFO)
    from .prepare import prepare

    try:
        manifest = prepare(
            args.spec, args.out, args.tokenizer, model_type=args.model_type, engine=args.engine,
            workers=args.workers, shard_size=args.shard_size, max_length=args.max_length,
            truncation=args.truncation, quiet=args.quiet, progress_stream=sys.stderr,
        )
    except (InvalidSpecError, VisionInputError, OSError) as exc:
        print(f"vlutils prepare: {exc}", file=sys.stderr)
        return 2
    counts = manifest["counts"]
    if not args.quiet:
        print(f"{args.out}: {counts['samples']} samples, {counts['rejected']} rejected, "
              f"{counts['tokens']} tokens, {len(manifest['shards'])} shard(s)", file=sys.stderr)
    return 0
