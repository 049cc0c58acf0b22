"""Resumable output: Parquet shards written atomically, a journal of finished shards, and the
final ``manifest.json`` / ``rejected.jsonl``.

Why it survives ``kill -9``: a shard is written to ``*.tmp``, fsynced and renamed into place
(a reader never sees half a shard), and only then is one line appended to ``_journal.jsonl``
naming the shard, the last record it covers and the records rejected since the previous
shard. A rerun reads the journal, drops a torn last line, and restarts after the last
record covered; shards after it are rewritten with identical content because the order
(source in spec order, then line) and the shard boundaries (every ``shard_size`` samples)
do not depend on timing or workers.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable

logger = logging.getLogger(__name__)

JOURNAL = "_journal.jsonl"
JOB = "_job.json"
MANIFEST = "manifest.json"
REJECTED = "rejected.jsonl"
LOCK = "_lock"
# Parquet row groups close after this many media bytes (or rows): random access to one sample
# then decompresses about one video, not its neighbours too.
ROW_GROUP_BYTES = 1 << 20
ROW_GROUP_ROWS = 64


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def read_journal(out: str) -> list[dict]:
    """Finished shard entries, in order; a torn last line (killed mid-append) is cut off."""
    path = os.path.join(out, JOURNAL)
    if not os.path.exists(path):
        return []
    entries, good_bytes = [], 0
    with open(path, "rb") as handle:
        for raw in handle:
            try:
                if not raw.endswith(b"\n"):
                    raise ValueError("torn line")
                entries.append(json.loads(raw))
            except ValueError:
                logger.warning("%s: dropping a torn journal line", path)
                break
            good_bytes += len(raw)
    if good_bytes != os.path.getsize(path):
        with open(path, "r+b") as handle:
            handle.truncate(good_bytes)
    return entries


class ShardWriter:
    """Groups rows into shards of ``shard_size`` samples and journals each finished shard."""

    def __init__(self, out: str, shard_size: int, entries: list[dict]):
        from .rows import schema

        self.out, self.shard_size, self.schema = out, shard_size, schema()
        self.entries = entries
        self.rows: list[dict] = []
        self.rejected: list[dict] = []
        self.last: list[int] | None = None

    @property
    def next_shard(self) -> int:
        return len(self.entries)

    def add(self, position: tuple[int, int], result: dict) -> None:
        """One record's result, in order; closes a shard when it reaches ``shard_size`` rows."""
        self.last = list(position)
        if result["kind"] == "row":
            self.rows.append(result["row"])
        else:
            self.rejected.append(result["rejected"])
        if len(self.rows) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write what is pending (the last, possibly short, shard)."""
        if not self.rows and not self.rejected:
            return
        number = self.next_shard
        name = None
        if self.rows:
            name = f"part-{number:05d}.parquet"
            self._write_parquet(os.path.join(self.out, name))
        entry = {
            "shard": number, "file": name, "rows": len(self.rows), "last": self.last,
            "rejected": self.rejected, "stats": _stats(self.rows),
        }
        with open(os.path.join(self.out, JOURNAL), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.entries.append(entry)
        self.rows, self.rejected = [], []

    def _write_parquet(self, path: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tmp = path + ".tmp"
        with pq.ParquetWriter(tmp, self.schema, compression="zstd") as writer:
            for group in _row_groups(self.rows):
                columns = {name: [row.get(name) for row in group] for name in self.schema.names}
                writer.write_table(pa.table(columns, schema=self.schema), row_group_size=len(group))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.out)


def _media_bytes(row: dict) -> int:
    return sum(len(m["data"]) for key in ("images", "videos") for m in (row.get(key) or [])) + sum(
        len(row.get(key) or b"") for key in ("pixel_values", "pixel_values_videos"))


def _row_groups(rows: list[dict]) -> list[list[dict]]:
    """Consecutive rows cut after ``ROW_GROUP_BYTES`` of media or ``ROW_GROUP_ROWS`` rows."""
    groups, current, size = [], [], 0
    for row in rows:
        current.append(row)
        size += _media_bytes(row)
        if size >= ROW_GROUP_BYTES or len(current) >= ROW_GROUP_ROWS:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    return groups


def _bucket(value: int) -> str:
    """Power-of-two histogram bucket: "<=256", "<=512", ..."""
    edge = 1
    while edge < value:
        edge *= 2
    return f"<={edge}"


def _stats(rows: list[dict]) -> dict:
    stats: dict[str, Any] = {"tokens": 0, "patches": 0, "bytes_media": 0, "per_source": {},
                             "token_hist": {}, "patch_hist": {}}
    for row in rows:
        tokens, patches = int(row.get("num_tokens") or 0), int(row.get("num_patches") or 0)
        stats["tokens"] += tokens
        stats["patches"] += patches
        stats["per_source"][row["source"]] = stats["per_source"].get(row["source"], 0) + 1
        for hist, value in (("token_hist", tokens), ("patch_hist", patches)):
            key = _bucket(value)
            stats[hist][key] = stats[hist].get(key, 0) + 1
    return stats


def finish(out: str, entries: list[dict], header: dict, source_names: Iterable[str]) -> dict:
    """Write ``rejected.jsonl`` and ``manifest.json`` from the journal (atomically) and return the manifest."""
    rejected = [r for entry in entries for r in entry["rejected"]]
    write_atomic(os.path.join(out, REJECTED), "".join(json.dumps(r) + "\n" for r in rejected).encode())
    per_source = {name: {"samples": 0, "rejected": 0} for name in source_names}
    totals = {"tokens": 0, "patches": 0}
    hists: dict[str, dict[str, int]] = {"token_hist": {}, "patch_hist": {}}
    for entry in entries:
        stats = entry["stats"]
        for name, count in stats["per_source"].items():
            per_source[name]["samples"] += count
        for key in totals:
            totals[key] += stats[key]
        for hist in hists:
            for bucket, count in stats[hist].items():
                hists[hist][bucket] = hists[hist].get(bucket, 0) + count
    for r in rejected:
        per_source[r["source"]]["rejected"] += 1
    samples = sum(e["rows"] for e in entries)
    by_edge = lambda h: dict(sorted(h.items(), key=lambda kv: int(kv[0][2:])))  # noqa: E731
    manifest = {
        **header,
        "counts": {"records": samples + len(rejected), "samples": samples, "rejected": len(rejected),
                   "per_source": per_source, "tokens": totals["tokens"], "patches": totals["patches"]},
        "histograms": {"num_tokens": by_edge(hists["token_hist"]), "num_patches": by_edge(hists["patch_hist"])},
        "shards": [{"file": e["file"], "rows": e["rows"]} for e in entries if e["file"]],
        "complete": True,
    }
    write_atomic(os.path.join(out, MANIFEST), (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest
