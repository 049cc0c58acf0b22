"""The output folder: Parquet shards and their reports, written by the workers; the manifest and
the rejected list, written by the driver at the end.

Layout of ``--out`` (a local folder, ``file://`` or ``s3://`` prefix)::

    _job.json                  the job (spec, tokenizer digest, shard size): a rerun must match it
    part-00007.parquet         shard 7: the samples of records [7*S, 8*S) (absent if all were rejected)
    _reports/part-00007.json   shard 7 is complete: its counts, stats and rejected records
    rejected.jsonl             every rejected record in record order (at the end)
    manifest.json              counts, histograms, the shard list (at the end; the job is done)

Why it survives ``kill -9`` of anything: a shard and its report are each written under a
temporary name and then renamed (filesystems) or copied (object stores) into place, so a reader
never sees half of either, and the report is written after the shard, so a report proves its
shard complete. A rerun lists ``_reports/`` and builds only the shards without one; rebuilding a
shard gives the same bytes, because a shard is a pure function of the spec and its number and
the Parquet writer is deterministic (fixed row groups, no timestamps).
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any, Iterable, Mapping

from .. import storage

logger = logging.getLogger(__name__)

JOB = "_job.json"
MANIFEST = "manifest.json"
REJECTED = "rejected.jsonl"
REPORTS = "_reports"
LOCK = "_lock"
# Parquet row groups close after this many media bytes (or rows): random access to one sample
# then decompresses about one video, not its neighbours too.
ROW_GROUP_BYTES = 1 << 20
ROW_GROUP_ROWS = 64


def shard_name(number: int) -> str:
    return f"part-{number:05d}.parquet"


def report_location(out: str, number: int) -> str:
    return storage.join(out, REPORTS, f"part-{number:05d}.json")


def completed_shards(out: str, storage_options: Mapping[str, str] | None = None) -> set[int]:
    """Numbers of the shards whose report exists (complete shards)."""
    done = set()
    for location in storage.list_dir(storage.join(out, REPORTS), storage_options=storage_options):
        name = storage.basename(location)
        if name.startswith("part-") and name.endswith(".json") and name[5:-5].isdigit():
            done.add(int(name[5:-5]))
    return done


def read_report(out: str, number: int, storage_options: Mapping[str, str] | None = None) -> dict:
    return json.loads(storage.read_bytes(report_location(out, number), storage_options=storage_options))


def remove_temporaries(out: str, storage_options: Mapping[str, str] | None = None) -> int:
    """Delete what killed writers left under temporary names (never visible as results)."""
    return sum(storage.remove_temporaries(folder, storage_options=storage_options)
               for folder in (out, storage.join(out, REPORTS)))


class ParquetShard:
    """Writes one shard's rows as they come, one row group at a time (a worker holds at most a row
    group of samples, never the whole shard). Nothing is visible until :meth:`close`."""

    def __init__(self, location: str, storage_options: Mapping[str, str] | None = None):
        from .rows import schema

        self.location, self.storage_options, self.schema = location, storage_options, schema()
        self.rows = 0
        self._group: list[dict] = []
        self._group_bytes = 0
        self._output: contextlib.ExitStack | None = None
        self._writer = None

    def add(self, row: dict) -> None:
        self._group.append(row)
        self._group_bytes += media_bytes(row)
        self.rows += 1
        if self._group_bytes >= ROW_GROUP_BYTES or len(self._group) >= ROW_GROUP_ROWS:
            self._write_group()

    def _write_group(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            self._output = contextlib.ExitStack()
            sink = self._output.enter_context(storage.atomic_output(self.location, storage_options=self.storage_options))
            self._writer = pq.ParquetWriter(sink, self.schema, compression="zstd")
        columns = {name: [row.get(name) for row in self._group] for name in self.schema.names}
        self._writer.write_table(pa.table(columns, schema=self.schema), row_group_size=len(self._group))
        self._group, self._group_bytes = [], 0

    def close(self) -> None:
        """Write the last row group and publish the file (no file when the shard has no rows)."""
        if self._group:
            self._write_group()
        if self._writer is not None:
            self._writer.close()
            self._output.close()

    def abort(self) -> None:
        if self._output is not None:
            self._output.__exit__(RuntimeError, RuntimeError("shard aborted"), None)


def media_bytes(row: dict) -> int:
    return sum(len(m["data"]) for key in ("images", "videos") for m in (row.get(key) or [])) + sum(
        len(row.get(key) or b"") for key in ("pixel_values", "pixel_values_videos"))


def _bucket(value: int) -> str:
    """Power-of-two histogram bucket: "<=256", "<=512", ..."""
    edge = 1
    while edge < value:
        edge *= 2
    return f"<={edge}"


class ShardStats:
    """Sizes of one shard's samples, folded as they are written."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {"tokens": 0, "patches": 0, "bytes_media": 0, "per_source": {},
                                     "token_hist": {}, "patch_hist": {}}

    def add(self, row: dict) -> None:
        stats = self.data
        tokens, patches = int(row.get("num_tokens") or 0), int(row.get("num_patches") or 0)
        stats["tokens"] += tokens
        stats["patches"] += patches
        stats["bytes_media"] += media_bytes(row)
        stats["per_source"][row["source"]] = stats["per_source"].get(row["source"], 0) + 1
        for hist, value in (("token_hist", tokens), ("patch_hist", patches)):
            key = _bucket(value)
            stats[hist][key] = stats[hist].get(key, 0) + 1


class Totals:
    """The manifest's counts, folded from shard reports in any order (the driver keeps only this,
    plus one small tuple per shard)."""

    def __init__(self, source_names: Iterable[str]):
        self.per_source = {name: {"samples": 0, "rejected": 0} for name in source_names}
        self.tokens = self.patches = self.bytes_media = self.samples = self.rejected = 0
        self.hists: dict[str, dict[str, int]] = {"token_hist": {}, "patch_hist": {}}
        self.by_error: dict[str, int] = {}
        self.shards: dict[int, tuple[str | None, int, int]] = {}  # number -> (file, rows, rejected)

    def add(self, report: dict) -> None:
        if report["shard"] in self.shards:
            return
        stats = report["stats"]
        self.shards[report["shard"]] = (report["file"], report["rows"], len(report["rejected"]))
        for name, count in stats["per_source"].items():
            self.per_source[name]["samples"] += count
        for rejected in report["rejected"]:
            self.per_source[rejected["source"]]["rejected"] += 1
            self.by_error[rejected["error"]] = self.by_error.get(rejected["error"], 0) + 1
        self.tokens += stats["tokens"]
        self.patches += stats["patches"]
        self.bytes_media += stats["bytes_media"]
        self.samples += report["rows"]
        self.rejected += len(report["rejected"])
        for hist in self.hists:
            for bucket, count in stats[hist].items():
                self.hists[hist][bucket] = self.hists[hist].get(bucket, 0) + count


def finish(out: str, totals: Totals, header: dict, storage_options: Mapping[str, str] | None = None) -> dict:
    """Write ``rejected.jsonl`` (from the reports of shards that rejected something) and
    ``manifest.json``, each atomically, and return the manifest."""
    numbers = sorted(totals.shards)
    if numbers != list(range(len(numbers))):
        raise RuntimeError(f"{out}: shard reports missing: {sorted(set(range(numbers[-1] + 1)) - set(numbers))}")
    lines = []
    for number in numbers:
        if totals.shards[number][2]:
            lines.extend(json.dumps(r) + "\n" for r in read_report(out, number, storage_options)["rejected"])
    storage.write_atomic(storage.join(out, REJECTED), "".join(lines).encode(), storage_options=storage_options)
    by_edge = lambda h: dict(sorted(h.items(), key=lambda kv: int(kv[0][2:])))  # noqa: E731
    manifest = {
        **header,
        "counts": {"records": totals.samples + totals.rejected, "samples": totals.samples,
                   "rejected": totals.rejected, "per_source": totals.per_source, "tokens": totals.tokens,
                   "patches": totals.patches, "bytes_media": totals.bytes_media,
                   "rejected_by_error": dict(sorted(totals.by_error.items()))},
        "histograms": {"num_tokens": by_edge(totals.hists["token_hist"]),
                       "num_patches": by_edge(totals.hists["patch_hist"])},
        "shards": [{"file": totals.shards[n][0], "rows": totals.shards[n][1]} for n in numbers
                   if totals.shards[n][0]],
        "complete": True,
    }
    storage.write_atomic(storage.join(out, MANIFEST), (json.dumps(manifest, indent=2) + "\n").encode(),
                         storage_options=storage_options)
    return manifest
