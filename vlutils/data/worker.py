"""What a worker does with one shard, under any engine: read its records, build each sample, write
the Parquet shard and then its report, straight to the output storage. Only the report (a few
hundred bytes plus the rejected records) goes back to the driver.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Mapping

from .. import storage
from . import shards
from .build import SampleBuilder
from .plan import ShardPlan, read_jobs
from .spec import DatasetSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardContext:
    """Everything a worker needs, picklable and small: the tokenizer travels as its JSON text so a
    node needs no copy of the driver's files."""

    spec: DatasetSpec
    tokenizer_json: str
    model_type: str
    out: str
    storage_options: Mapping[str, str] = field(default_factory=dict)
    job_id: str = ""  # one cached builder per job (settings, tokenizer, locations) and process


@dataclass(frozen=True)
class WorkerResources:
    """How many workers, and what each reserves (Ray schedules by these; local uses ``workers``)."""

    workers: int | None = None
    cpus: float | None = None
    memory: int | None = None


_builders: dict[str, SampleBuilder] = {}


def builder_for(context: ShardContext) -> SampleBuilder:
    """One SampleBuilder per process and job (the tokenizer is parsed once, not once per shard)."""
    builder = _builders.get(context.job_id)
    if builder is None:
        _builders.clear()
        storage.use_storage_options(context.storage_options)  # also for s3:// media fetched by process_vision_info
        builder = SampleBuilder(context.spec, None, context.model_type, tokenizer_json=context.tokenizer_json,
                                storage_options=context.storage_options)
        _builders[context.job_id] = builder
    return builder


def build_shard(plan: ShardPlan, context: ShardContext) -> dict:
    """Build and publish shard ``plan.number``; return its report (also written to ``_reports/``)."""
    builder = builder_for(context)
    out, options = context.out, context.storage_options
    name = shards.shard_name(plan.number)
    writer = shards.ParquetShard(storage.join(out, name), options)
    stats = shards.ShardStats()
    rejected: list[dict] = []
    first = last = None
    try:
        for job in read_jobs(plan, options):
            result = builder(job)
            first = first or [job.source, job.index]
            last = [job.source, job.index]
            if result["kind"] == "row":
                writer.add(result["row"])
                stats.add(result["row"])
            else:
                rejected.append(result["rejected"])
        writer.close()
    except BaseException:
        writer.abort()
        raise
    report = {"shard": plan.number, "file": name if writer.rows else None, "records": plan.records,
              "rows": writer.rows, "first": first, "last": last, "rejected": rejected, "stats": stats.data}
    data = (json.dumps(report, separators=(",", ":"), sort_keys=True) + "\n").encode()
    with storage.atomic_output(shards.report_location(out, plan.number), storage_options=options) as handle:
        handle.write(data)
    return report
