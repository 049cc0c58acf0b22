"""``prepare``: a dataset spec -> Parquet shards + manifest + rejected list, resumably, on one
machine or a Ray cluster, from and to local disk or object storage.

The driver only plans and tracks: it streams the shard plan (:mod:`vlutils.data.plan`: byte
ranges of the record files, never the records), skips shards whose report already exists,
hands the rest to an engine (local processes or Ray tasks) whose workers build, encode and
write each shard themselves (:mod:`vlutils.data.worker`), folds the small reports they return
into running totals, and at the end writes the manifest and the rejected list. Its memory does
not grow with the number of records, it never sees a pixel, and the output bytes do not depend
on the engine, the worker count, the storage or an interruption.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Iterator, Mapping

from .. import storage
from ..clitext import install_hint
from ..errors import InvalidOptionError, InvalidSpecError, TooManyRejectedError
from ..families import get_family
from . import shards
from .plan import ShardPlan, iter_plan
from .progress import Progress
from .spec import TRUNCATION, DatasetSpec, load_spec, normalize_location
from .worker import ShardContext, WorkerResources

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 1000
# A run rejecting more than this share of its records exits with an error (after writing
# everything): at that rate the cause is a setting (a wrong media_dir, missing credentials),
# not a few bad records. Tighten it for curated data (``--max-rejected 0.01``).
DEFAULT_MAX_REJECTED = 0.5
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
                 truncation: str | None = None, shard_size: int | None = None,
                 storage_options: Mapping[str, str] | None = None) -> DatasetSpec:
    """Load the spec, apply command-line overrides (flags win over the spec) and validate the
    settings that only make sense once the model type is known (vision sizes)."""
    from .vision_check import check_vision_settings

    spec = load_spec(spec, storage_options) if isinstance(spec, str) else spec
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
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise InvalidSpecError(f"shard_size must be a positive integer, got {shard_size!r}")
        changes["shard_size"] = shard_size
    spec = replace(spec, **changes)
    try:
        get_family(spec.model_type, "prepare")
    except InvalidOptionError as exc:
        raise InvalidSpecError(f"spec: {exc.reason}") from None
    if spec.shard_size is None:
        spec = replace(spec, shard_size=DEFAULT_SHARD_SIZE)
    check_vision_settings(spec)
    return spec


def prepare(spec: str | DatasetSpec, out: str, tokenizer: str, *, model_type: str | None = None,
            engine: str = "local", workers: int | None = None, shard_size: int | None = None,
            max_length: int | None = None, truncation: str | None = None, quiet: bool = True,
            progress_stream: Any = None, storage_options: Mapping[str, str] | None = None,
            worker_cpus: float | None = None, worker_memory: int | None = None,
            max_rejected: float | None = DEFAULT_MAX_REJECTED) -> dict:
    """Prepare ``spec`` into ``out`` (a folder, ``file://`` or ``s3://`` prefix) and return the manifest.

    Rerunning the same command after a crash continues where it stopped; rerunning it on a
    finished folder returns its manifest. A different job in the same folder is refused. When
    more than ``max_rejected`` of the records are rejected, :class:`TooManyRejectedError` is
    raised after everything is written (``None``: never).
    """
    if engine not in ENGINES:
        raise InvalidSpecError(f"engine must be one of {ENGINES}, got {engine!r}")
    if max_rejected is not None and not 0 <= max_rejected <= 1:
        raise InvalidSpecError(f"max_rejected must be a fraction in [0, 1], got {max_rejected!r}")
    require_extras(engine)
    # what the environment gives, made explicit: workers on other nodes get these, not their own environment
    options = {**storage.storage_options_from_env(), **{k: str(v) for k, v in (storage_options or {}).items()}}
    unknown = sorted(set(options) - set(storage.OPTION_KEYS))
    if unknown:
        raise InvalidSpecError(f"unknown storage option(s) {unknown}; known: {', '.join(storage.OPTION_KEYS)}")
    out = normalize_location(out)
    spec = resolve_spec(spec, model_type=model_type, max_length=max_length, truncation=truncation,
                        shard_size=shard_size, storage_options=options)
    from .build import read_tokenizer_json

    tokenizer_json = read_tokenizer_json(tokenizer, options)
    from .. import __version__

    header = {
        "format": "vlutils.prepared/2", "vlutils_version": __version__, "spec": spec.to_json(),
        "spec_hash": spec.digest(), "tokenizer_sha256": hashlib.sha256(tokenizer_json.encode()).hexdigest(),
        "model_type": spec.model_type, "shard_size": spec.shard_size,
    }
    job_id = hashlib.sha256(json.dumps([header, spec.base, out], sort_keys=True).encode()).hexdigest()
    context = ShardContext(spec, tokenizer_json, spec.model_type, out, options, job_id=job_id)
    resources = WorkerResources(workers, worker_cpus, worker_memory)
    if not storage.is_remote(out):
        os.makedirs(out, exist_ok=True)
    with _exclusive(out):
        manifest = _run(context, header, engine, resources, quiet, progress_stream)
    check_rejected(manifest, max_rejected, out)
    return manifest


def check_rejected(manifest: dict, max_rejected: float | None, out: str) -> None:
    """Raise :class:`TooManyRejectedError` (with a summary) when too many records were rejected."""
    counts = manifest["counts"]
    share = counts["rejected"] / counts["records"] if counts["records"] else 0.0
    if max_rejected is None or share <= max_rejected:
        return
    errors = ", ".join(f"{name} x{n}" for name, n in sorted(counts.get("rejected_by_error", {}).items(),
                                                              key=lambda kv: (-kv[1], kv[0])))
    sources = ", ".join(f"{name}: {c['rejected']}/{c['samples'] + c['rejected']}"
                        for name, c in counts["per_source"].items() if c["rejected"])
    raise TooManyRejectedError(
        f"{out}: {counts['rejected']} of {counts['records']} records rejected ({share:.1%}, above the limit of "
        f"{max_rejected:.1%}); by error: {errors}; by source: {sources}; details in "
        f"{storage.join(out, shards.REJECTED)}", manifest)


@contextlib.contextmanager
def _exclusive(out: str) -> Iterator[None]:
    """One job per local folder at a time: a second process on the same folder fails at once. A
    POSIX record lock belongs to this process only (forked workers do not inherit it) and goes
    away when the process dies, so a rerun after ``kill -9`` is never locked out. Object stores
    have no locks: there, running one job per prefix is up to the user."""
    if storage.is_remote(out):
        yield
        return
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


def _run(context: ShardContext, header: dict, engine: str, resources: WorkerResources, quiet: bool,
         progress_stream: Any) -> dict:
    out, options, spec = context.out, context.storage_options, context.spec
    _claim(out, header, options)
    manifest_location = storage.join(out, shards.MANIFEST)
    if storage.exists(manifest_location, storage_options=options):
        return json.loads(storage.read_bytes(manifest_location, storage_options=options))
    removed = shards.remove_temporaries(out, options)
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted run", removed)
    totals = shards.Totals(s.name for s in spec.sources)
    done = sorted(shards.completed_shards(out, options))
    with ThreadPoolExecutor(16) as pool:  # object stores: many small GETs at once
        for report in pool.map(lambda n: shards.read_report(out, n, options), done):
            totals.add(report)
    if done:
        logger.info("resuming %s: reusing %d completed shard(s) (%d records)", out, len(done),
                    totals.samples + totals.rejected)
    progress = Progress(None, done=totals.samples + totals.rejected, rejected=totals.rejected,
                        tokens=totals.tokens, quiet=quiet, stream=progress_stream)
    plans = _todo(iter_plan(spec, spec.shard_size, options), set(done), progress)
    if engine == "local":
        from .engine_local import run_local as run
    else:
        from .engine_ray import run_ray as run
    for report in run(plans, context, resources):
        totals.add(report)
        progress.update(report)
    progress.close()
    return shards.finish(out, totals, header, options)


def _todo(plans: Iterator[ShardPlan], done: set[int], progress: Progress) -> Iterator[ShardPlan]:
    """The plans of shards not built yet; tells ``progress`` the record total once planning ends."""
    records = 0
    for plan in plans:
        records += plan.records
        if plan.number not in done:
            yield plan
    progress.total = records


def _claim(out: str, header: dict, options: Mapping[str, str]) -> None:
    """Record the job in ``out`` or check that ``out`` holds this same job."""
    location = storage.join(out, shards.JOB)
    header = json.loads(json.dumps(header))  # tuples -> lists, as read back
    if storage.exists(location, storage_options=options):
        existing = json.loads(storage.read_bytes(location, storage_options=options))
        if existing != header:
            changed = sorted(k for k in set(existing) | set(header) if existing.get(k) != header.get(k))
            raise InvalidSpecError(f"{out} holds a different preparation job (differs in {changed}); use another --out")
        return
    if any(name.endswith(".parquet") for name in storage.list_dir(out, storage_options=options)):
        raise InvalidSpecError(f"{out} already holds Parquet files from something else; use an empty folder")
    storage.write_atomic(location, (json.dumps(header, indent=2, sort_keys=True) + "\n").encode(),
                         storage_options=options)
