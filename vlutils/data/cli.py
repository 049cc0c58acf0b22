"""``python -m vlutils prepare SPEC --out DIR --tokenizer TOKENIZER --model-type TYPE``."""

from __future__ import annotations

import argparse
import logging
import re
import sys

from ..errors import InvalidSpecError, TooManyRejectedError, VisionInputError
from ..families import model_types

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


def parse_size(text: str) -> int:
    """``"4GiB"``, ``"512MB"``, ``"2e9"`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4GiB, 512MB, 2000000000)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    from .prepare import DEFAULT_MAX_REJECTED

    parser = argparse.ArgumentParser(
        prog="vlutils prepare",
        description="Prepare a dataset (JSONL file or mixture config) into resumable Parquet shards, on this "
                    "machine or a Ray cluster (RAY_ADDRESS), from and to local disk, file:// or s3://.")
    parser.add_argument("spec", help="a .jsonl dataset, or a mixture config (.json / .yaml); local, file:// or s3://")
    parser.add_argument("--out", required=True,
                        help="output folder or s3://bucket/prefix (rerun the same command to resume)")
    parser.add_argument("--tokenizer", required=True, help="a tokenizer.json or qwen.tiktoken (Qwen-VL) file, or a folder holding one")
    parser.add_argument("--model-type", choices=model_types("prepare"), help="overrides the spec")
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    parser.add_argument("--workers", type=int,
                        help="worker processes (local) or shards at once (ray); default: every CPU (of the cluster)")
    parser.add_argument("--worker-cpus", type=float, help="ray: CPUs each shard task reserves (default 1)")
    parser.add_argument("--worker-memory", type=parse_size,
                        help="ray: memory each shard task reserves, e.g. 4GiB (default: none reserved)")
    parser.add_argument("--shard-size", type=int, help="records per shard (default 1000)")
    parser.add_argument("--max-length", type=int, help="overrides the spec")
    parser.add_argument("--truncation", choices=("error", "drop", "shrink"), help="overrides the spec")
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="object storage setting (endpoint_url, access_key, secret_key, region, ...); "
                             "default: the AWS_* environment variables")
    parser.add_argument("--max-rejected", type=_fraction, default=DEFAULT_MAX_REJECTED,
                        help=f"exit with an error when more than this share of records is rejected "
                             f"(default {DEFAULT_MAX_REJECTED})")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(message)s")
    if not args.quiet:  # progress lines, not every fetched video
        logging.getLogger("vlutils.data").setLevel(logging.INFO)
    from .. import storage
    from .engine_local import WorkerDiedError
    from .prepare import prepare

    try:
        options = storage.parse_storage_options(args.storage_option)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        manifest = prepare(
            args.spec, args.out, args.tokenizer, model_type=args.model_type, engine=args.engine,
            workers=args.workers, shard_size=args.shard_size, max_length=args.max_length,
            truncation=args.truncation, quiet=args.quiet, progress_stream=sys.stderr,
            storage_options=options, worker_cpus=args.worker_cpus,
            worker_memory=args.worker_memory, max_rejected=args.max_rejected,
        )
    except TooManyRejectedError as exc:
        print(f"vlutils prepare: {exc}", file=sys.stderr)
        return 1
    except WorkerDiedError as exc:
        print(f"vlutils prepare: {exc}", file=sys.stderr)
        return 3
    except (InvalidSpecError, VisionInputError, OSError) as exc:
        print(f"vlutils prepare: {exc}", file=sys.stderr)
        return 2
    counts = manifest["counts"]
    if not args.quiet:
        print(f"{args.out}: {counts['samples']} samples, {counts['rejected']} rejected, "
              f"{counts['tokens']} tokens, {len(manifest['shards'])} shard(s)", file=sys.stderr)
    return 0
