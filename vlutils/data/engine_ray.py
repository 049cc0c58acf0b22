"""The Ray engine: one plain Ray task per shard, on the cluster at ``RAY_ADDRESS`` or a local Ray.

Why tasks and not Ray Data: a shard is already the unit of work (its records, its file), so
``ray.remote`` per shard is all the scheduling needed. Each task reads its records from the
record files, builds and writes its shard and report to the output storage, and returns only
the report. That avoids what Ray Data's actor pool cost here: results streamed back through
the driver, a 64-block cap from ``from_items``, read tasks starved by the pool on small
machines, actor-restart arguments kept in the object store, and its progress/memory/INFO
output.

Resources: each task reserves ``cpus`` (default 1) and optionally ``memory`` bytes; the
driver keeps about two tasks per task slot of the whole cluster in flight, so every node gets
work and a freed slot starts its next shard at once. A task whose worker process or node dies
is retried by Ray elsewhere (``max_retries``), and rebuilding a shard gives the same bytes.
"""

from __future__ import annotations

import collections
import logging
import os
from typing import Iterable, Iterator

from .plan import ShardPlan
from .worker import ShardContext, WorkerResources, build_shard

logger = logging.getLogger(__name__)

KILL_MARKER_ENV = "VLUTILS_RAY_TEST_KILL_MARKER"  # tests: a task SIGKILLs its worker once if this file exists
MAX_RETRIES = 5  # per shard, for lost worker processes or nodes (a bad record never fails a shard)


def init_ray():
    """Connect to ``RAY_ADDRESS`` or start a local Ray (once per process), quietly.

    A local Ray is private to this job: Ray turns its token authentication on by default and
    says so in a warning on every start, which is noise here (the notice is silenced, the
    authentication stays), and its usage stats stay off unless the user turned them on. On a
    cluster, the cluster's settings rule (``RAY_AUTH_MODE``: see docs/cluster.md).
    """
    address = os.environ.get("RAY_ADDRESS") or None
    if address is None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if not ray.is_initialized():
        logger.info("ray: %s", f"connecting to {address}" if address else "starting a local Ray")
        notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level = notice.level
        if address is None:
            notice.setLevel(logging.ERROR)
        try:
            # "local" starts a private Ray: address=None would join whatever cluster `ray start` last left on
            # this machine (another user's job, or a test cluster that is about to stop).
            ray.init(address=address or "local", logging_level=logging.WARNING, log_to_driver=False,
                     include_dashboard=False, configure_logging=False)
        finally:
            notice.setLevel(level)
    return ray


def _task(plan: ShardPlan, context: ShardContext, kill_marker: str | None) -> tuple[dict, str]:
    """Runs on a Ray worker: build one shard; return its report and the node it ran on."""
    import ray
    import torch

    torch.set_num_threads(1)  # Ray gives each task its CPUs; decoders and resize are per-core
    if kill_marker and os.path.exists(kill_marker):
        os.remove(kill_marker)
        os.kill(os.getpid(), 9)  # a worker lost mid-shard: Ray must retry the task
    return build_shard(plan, context), ray.get_runtime_context().get_node_id()


def task_slots(cluster_cpus: float, cpus_per_task: float, workers: int | None = None) -> int:
    """How many shards run at once: ``workers`` if given, else as many tasks as the cluster's CPUs hold."""
    if workers:
        return workers
    return max(1, int(cluster_cpus // cpus_per_task))


def run_ray(plans: Iterable[ShardPlan], context: ShardContext, resources: WorkerResources | None = None) -> Iterator[dict]:
    """Build every planned shard as a Ray task; yield each report as its task finishes (any order)."""
    ray = init_ray()
    cpus = (resources.cpus if resources else None) or 1.0
    memory = (resources.memory if resources else None)
    cluster = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    slots = task_slots(cluster.get("CPU", 1.0), cpus, (resources.workers if resources else None))
    if cpus > max((n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0):
        from ..errors import InvalidSpecError

        raise InvalidSpecError(f"--worker-cpus {cpus:g} is more than any node of the Ray cluster has")
    logger.info("ray: %d node(s), %g CPU(s); %d shard(s) at a time, %g CPU each", nodes, cluster.get("CPU", 0),
                slots, cpus)
    remote = ray.remote(_task).options(num_cpus=cpus, memory=memory, max_retries=MAX_RETRIES,
                                       retry_exceptions=False)
    context_ref = ray.put(context)  # the tokenizer text travels once, not once per shard
    kill_marker = os.environ.get(KILL_MARKER_ENV)
    pending: list = []
    per_node: collections.Counter = collections.Counter()

    def finished(refs: list) -> Iterator[dict]:
        for ref in refs:
            report, node = ray.get(ref)
            per_node[node] += 1
            yield report

    try:
        for plan in plans:
            pending.append(remote.remote(plan, context_ref, kill_marker))
            while len(pending) >= 2 * slots:
                ready, pending = ray.wait(pending, num_returns=1)
                yield from finished(ready)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield from finished(ready)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    names = {n["NodeID"]: n.get("NodeManagerAddress", "?") + ":" + str(n.get("NodeManagerPort", "")) for n in ray.nodes()}
    logger.info("ray: shards built per node: %s", {names.get(node, node): count for node, count in per_node.items()})
