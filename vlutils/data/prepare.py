"""``prepare``: a dataset spec -> Parquet shards + manifest + rejected list, resumably.

The driver owns the order and the output: it lists the records (source in spec order, then
line), skips those a previous run already journaled, hands the rest to an engine (local
processes or Ray Data) that returns results *in order*, and writes them through one
:class:`~vlutils.data.shards.ShardWriter`. Output therefore never depends on the engine,
the worker count or an interruption.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import replace
from typing import Any, Iterator

from ..clitext import install_hint
from ..errors import InvalidOptionError, InvalidSpecError
from ..families import get_family
from . import shards
from .build import Job
from .progress import Progress
from .spec import DatasetSpec, TRUNCATION, iter_lines, load_spec

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 1000
ENGINES = ("local", "ray")


def require_extras(engine: str = "local") -> None:
    """Fail with what to install when pyarrow (or Ray) is missing."""
    missing = []
    for module, extra in (("pyarrow", "data"), ("tokenizers", "data")) + ((("ray", "ray"),) if engine == "ray" else ()):
        try:
            __import__(module)
        except ImportError:
            if extra not in missing:
                missing.append(extra)
    if missing:
        raise InvalidSpecError(
            f"dataset preparation needs {' and '.join(missing)} support: {install_hint(*missing)}")


def resolve_spec(spec: str | DatasetSpec, *, model_type: str | None = None, max_length: int | None = None,
                 truncation: str | None = None, shard_size: int | None = None) -> DatasetSpec:
    """Load the spec and apply command-line overrides (flags win over the spec)."""
    spec = load_spec(spec) if isinstance(spec, str) else spec
    changes: dict[str, Any] = {}
    if model_type is not None:
        changes["model_type"] = model_type
    if max_length is not None:
        changes["max_length"] = max_length
    if truncation is not None:
        if truncation not in TRUNCATION:
            raise InvalidSpecError(f"truncation must be one of {TRUNCATION}, got {truncation!r}")
        changes["truncation"] = truncation
    if shard_size is not None:
        changes["shard_size"] = shard_size
    spec = replace(spec, **changes)
    try:
        get_family(spec.model_type, "prepare")
    except InvalidOptionError as exc:
        raise InvalidSpecError(f"spec: {exc.reason}") from None
    if spec.shard_size is None:
        spec = replace(spec, shard_size=DEFAULT_SHARD_SIZE)
    return spec


def _file_digest(path: str) -> str:
    file = path
    if os.path.isdir(path):
        names = [n for n in ("tokenizer.json", "qwen.tiktoken") if os.path.isfile(os.path.join(path, n))]
        file = os.path.join(path, names[0] if names else "tokenizer.json")
    with open(file, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def iter_jobs(spec: DatasetSpec, after: list[int] | None = None) -> Iterator[Job]:
    """Every record in output order, skipping those up to and including ``after``."""
    for s, source in enumerate(spec.sources):
        if after is not None and s < after[0]:
            continue
        for index, line, path in iter_lines(source):
            if after is not None and (s, index) <= tuple(after):
                continue
            yield Job(s, index, line, path)


def count_records(spec: DatasetSpec) -> int:
    return sum(1 for source in spec.sources for _ in iter_lines(source))


def prepare(spec: str | DatasetSpec, out: str, tokenizer: str, *, model_type: str | None = None,
            engine: str = "local", workers: int | None = None, shard_size: int | None = None,
            max_length: int | None = None, truncation: str | None = None, quiet: bool = True,
            progress_stream: Any = None) -> dict:
    """Prepare ``spec`` into ``out`` (created if needed) and return the manifest.

    Rerunning the same command after a crash continues where it stopped; rerunning it on a
    finished directory returns its manifest. A different job in the same folder is refused.
    """
    if engine not in ENGINES:
        raise InvalidSpecError(f"engine must be one of {ENGINES}, got {engine!r}")
    require_extras(engine)
    spec = resolve_spec(spec, model_type=model_type, max_length=max_length, truncation=truncation,
                        shard_size=shard_size)
    from .. import __version__

    header = {
        "format": "vlutils.prepared/1", "vlutils_version": __version__, "spec": spec.to_json(),
        "spec_hash": spec.digest(), "tokenizer_sha256": _file_digest(tokenizer), "model_type": spec.model_type,
        "shard_size": spec.shard_size,
    }
    os.makedirs(out, exist_ok=True)
    with _exclusive(out):
        return _run(spec, out, tokenizer, header, engine, workers, quiet, progress_stream)


@contextlib.contextmanager
def _exclusive(out: str):
    """One job per folder at a time: a second process on the same folder fails at once. A POSIX
    record lock belongs to this process only (forked workers do not inherit it) and goes away
    when the process dies, so a rerun after ``kill -9`` is never locked out."""
    import fcntl

    with open(os.path.join(out, shards.LOCK), "a") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InvalidSpecError(f"{out}: another preparation job is running on this folder") from None
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def _run(spec: DatasetSpec, out: str, tokenizer: str, header: dict, engine: str, workers: int | None,
         quiet: bool, progress_stream: Any) -> dict:
    _claim(out, header)
    manifest_path = os.path.join(out, shards.MANIFEST)
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as handle:
            return json.load(handle)
    entries = shards.read_journal(out)
    after = entries[-1]["last"] if entries else None
    writer = shards.ShardWriter(out, spec.shard_size, entries)
    done = sum(e["rows"] + len(e["rejected"]) for e in entries)
    progress = Progress(count_records(spec), done=done, quiet=quiet, stream=progress_stream)
    if after is not None:
        logger.info("resuming %s after %d finished shard(s) (%d records done)", out, len(entries), done)
    jobs = iter_jobs(spec, after)
    if engine == "local":
        from .engine_local import run_local as run
    else:
        from .engine_ray import run_ray as run
    for job, result in run(jobs, spec, tokenizer, spec.model_type, workers):
        writer.add((job.source, job.index), result)
        progress.update(result)
    writer.flush()
    progress.close()
    return shards.finish(out, writer.entries, header, [s.name for s in spec.sources])


def _claim(out: str, header: dict) -> None:
    """Record the job in ``out`` or check that ``out`` holds this same job."""
    path = os.path.join(out, shards.JOB)
    header = json.loads(json.dumps(header))  # tuples -> lists, as read back
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            existing = json.load(handle)
        if existing != header:
            changed = sorted(k for k in set(existing) | set(header) if existing.get(k) != header.get(k))
            raise InvalidSpecError(f"{out} holds a different preparation job (differs in {changed}); use another --out")
        return
    if any(name.endswith(".parquet") for name in os.listdir(out)):
        raise InvalidSpecError(f"{out} already holds Parquet files from something else; use an empty folder")
    shards.write_atomic(path, (json.dumps(header, indent=2, sort_keys=True) + "\n").encode())
