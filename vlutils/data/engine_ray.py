"""The Ray engine: the same job on Ray Data, on a cluster (``RAY_ADDRESS``) or a local Ray.

Pipeline: read (the records, as a dataset of small rows) -> ``map_batches`` on an actor
pool (each actor loads the tokenizer once, fetches media and builds samples) -> write. The
write runs on the driver through the same :class:`~vlutils.data.shards.ShardWriter` as the
local engine, reading results in order (``preserve_order``), so both engines produce the
same bytes and the same journal, and resume the same way.

Resources: actors reserve at most the cluster's CPUs minus 1.5, so the read tasks always
find a CPU (on 2 cores a pool of 2 one-CPU actors starves the read task and never
progresses); on small machines one actor with ``num_cpus=0.5``. A killed actor is
restarted and its batch retried (``max_restarts`` / ``max_task_retries``).
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Iterable, Iterator

from .build import Job, SampleBuilder
from .spec import DatasetSpec

logger = logging.getLogger(__name__)

KILL_MARKER_ENV = "VLUTILS_RAY_TEST_KILL_MARKER"  # tests: an actor kills itself once if this file exists
BATCH_SIZE = 4


def actor_resources(cluster_cpus: float, workers: int | None = None) -> tuple[int, float]:
    """``(pool size, CPUs per actor)`` that always leaves the read tasks at least 1.5 CPUs' room."""
    budget = max(0.5, cluster_cpus - 1.5)
    size = workers or max(1, int(budget))
    return size, min(1.0, budget / size)


class _RayBuilder:
    """An actor of the pool: one SampleBuilder (tokenizer loaded once)."""

    def __init__(self, spec: DatasetSpec, tokenizer: str, model_type: str, kill_marker: str | None = None):
        import torch

        torch.set_num_threads(1)
        self.builder = SampleBuilder(spec, tokenizer, model_type)
        self.kill_marker = kill_marker

    def __call__(self, batch: dict) -> dict:
        if self.kill_marker and os.path.exists(self.kill_marker):
            os.remove(self.kill_marker)
            os.kill(os.getpid(), 9)  # a worker lost mid-job: Ray must restart it and retry this batch
        payloads = []
        for source, index, line, path in zip(batch["source"], batch["index"], batch["line"], batch["path"]):
            result = self.builder(Job(int(source), int(index), bytes(line), str(path)))
            payloads.append(pickle.dumps(result, protocol=5))
        return {"source": batch["source"], "index": batch["index"], "payload": payloads}


def init_ray():
    """Connect to ``RAY_ADDRESS`` or start a local Ray (once per process)."""
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        logger.info("ray: %s", f"connecting to {address}" if address else "starting a local Ray")
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                 include_dashboard=False, configure_logging=False)
    return ray


def run_ray(jobs: Iterable[Job], spec: DatasetSpec, tokenizer: str, model_type: str,
            workers: int | None = None) -> Iterator[tuple[Job, dict]]:
    """``(job, result)`` for every job, in the order given, computed on Ray Data."""
    items = [{"source": j.source, "index": j.index, "line": j.line, "path": j.path} for j in jobs]
    if not items:
        return
    ray = init_ray()
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    size, cpus = actor_resources(ray.cluster_resources().get("CPU", 1.0), workers)
    logger.info("ray: %d actor(s) with %.2g CPU each for %d records", size, cpus, len(items))
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // BATCH_SIZE, 64)))
    results = dataset.map_batches(
        _RayBuilder,
        fn_constructor_args=(spec, os.path.abspath(tokenizer), model_type, os.environ.get(KILL_MARKER_ENV)),
        batch_size=BATCH_SIZE, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=size),
        num_cpus=cpus, max_restarts=-1, max_task_retries=-1,
    )
    rows = iter(results.iter_rows())
    for item in items:
        row = next(rows)
        if (int(row["source"]), int(row["index"])) != (item["source"], item["index"]):
            raise RuntimeError(f"Ray returned record {row['source']}:{row['index']} out of order")
        yield Job(item["source"], item["index"], item["line"], item["path"]), pickle.loads(row["payload"])
